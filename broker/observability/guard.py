"""stdout and stderr under ``broker run``: what the broker did not write itself, redacted.

The broker's own log lines are redacted as they are formatted (logs.py) and go to the
stream the logging handler was given before these guards exist.  Everything else that
reaches ``sys.stdout`` / ``sys.stderr`` — a handler's ``print``, a library's warning, the
traceback ``sys.excepthook`` or ``threading.excepthook`` prints for an exception nobody
caught, Python's "Exception ignored in" — passes through ``redact`` line by line: the
held tokens (held.py) by content, token-named fields, long secrets.  Lines are buffered
up to their newline so that a token written in pieces is redacted whole; a line longer
than ``_MAX_PENDING`` is written in parts.

Bytes written to ``sys.stderr.buffer`` or straight to file descriptor 2 (C extensions,
``faulthandler``) are not seen here.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Final, TextIO

from broker.observability.events import current_token
from broker.observability.redact import redact

__all__ = ["RedactingStream", "guard_output"]

_MAX_PENDING: Final = 65_536


class RedactingStream:
    """A text stream that writes ``redact``-ed whole lines to ``raw``."""

    def __init__(self, raw: TextIO) -> None:
        self.raw = raw
        self._pending = ""
        self._lock = threading.RLock()

    def write(self, text: str) -> int:
        with self._lock:
            pending = self._pending + text
            cut = pending.rfind("\n") + 1
            if not cut and len(pending) > _MAX_PENDING:
                cut = len(pending)
            self._pending = pending[cut:]
            if cut:
                self.raw.write(redact(pending[:cut], current_token()))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        with self._lock:
            if self._pending:
                self.raw.write(redact(self._pending, current_token()))
                self._pending = ""
            self.raw.flush()

    def __getattr__(self, name: str) -> Any:
        # isatty, fileno, encoding, errors, buffer...: the raw stream's.
        return getattr(self.raw, name)


def guard_output() -> None:
    """Put ``sys.stdout`` and ``sys.stderr`` behind ``RedactingStream`` (once)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, RedactingStream):
            setattr(sys, name, RedactingStream(stream))
