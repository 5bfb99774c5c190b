"""``broker demo``, the progress display on stderr while the executions run."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final, TextIO

__all__ = ["Progress", "Snapshot"]

_PLAIN_PROGRESS_EVERY_S: Final = 5.0


@dataclass(frozen=True)
class Snapshot:
    planned: int
    started: int
    completed: int
    elapsed_s: float

    @property
    def running(self) -> int:
        return self.started - self.completed

    @property
    def rate(self) -> float:
        return self.completed / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def line(self) -> str:
        return (
            f"started {self.started}/{self.planned}  completed {self.completed}  "
            f"running {self.running}  {self.rate:.1f} completions/s  {self.elapsed_s:.1f} s"
        )


class Progress:
    """One rewritten line on a terminal; a plain line every few seconds otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        # The first plain line comes after one period: at once it would only say "0".
        self._last_plain = time.monotonic()
        self._width = 0
        self._last: Snapshot | None = None
        self._last_written: Snapshot | None = None

    def show(self, snapshot: Snapshot) -> None:
        self._last = snapshot
        line = snapshot.line()
        if self._tty:
            self._stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
        else:
            now = time.monotonic()
            if now - self._last_plain < _PLAIN_PROGRESS_EVERY_S:
                return
            self._last_plain = now
            self._stream.write(line + "\n")
        self._last_written = snapshot
        self._stream.flush()

    def finish(self) -> None:
        """End the progress display with the last state seen."""
        if self._last is None:
            return
        if self._tty:
            self._stream.write("\n")
        elif self._last is not self._last_written:
            self._stream.write(self._last.line() + "\n")
        self._stream.flush()
