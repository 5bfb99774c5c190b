"""Logging set-up: JSON lines for containers, readable text on a terminal.

Every record passes through one redaction step (``redact.py`` beside this module), so a
task token that slipped into a message, an ``extra`` field or an exception (botocore
includes request parameters in some errors, and prints whole request and response bodies
at DEBUG) is replaced by its short hash before it is written anywhere.  That holds for
records written outside any message's context too (another thread's, asyncio's "Task
exception was never retrieved"): every token the process holds is looked for, by content.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, TextIO

import orjson

from broker.observability.events import current_token
from broker.observability.redact import redact, register_token_fields

__all__ = ["JsonFormatter", "TextFormatter", "configure_logging", "redact_tokens"]

#: Attributes of every LogRecord; anything else on a record is an ``extra=`` field.
_STANDARD_FIELDS: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)
#: Where botocore and aiobotocore announce the credential source they found.
_CREDENTIAL_LOGGERS: Final = ("botocore.credentials", "aiobotocore.credentials")
_COLOURS: Final = {"WARNING": "\033[33m", "ERROR": "\033[31m", "CRITICAL": "\033[1;31m"}


def redact_tokens(text: str) -> str:
    """Replace the token of the task being handled, and anything token-like, by a hash.

    Log records are formatted in the task that wrote them, so a handler's own log line
    that quotes ``task.token`` is caught whatever the token looks like (the emulators'
    tokens are short UUIDs that no pattern would catch).  Outside a message (botocore's
    lines about a ReceiveMessage) the token-named fields are what is caught.
    """
    return redact(text, current_token())


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_FIELDS}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact_tokens(record.getMessage()),
        }
        for key, value in _fields(record).items():
            kind = type(value)
            event[key] = (
                redact_tokens(value)
                if kind is str
                else value
                if kind in _SCALARS
                else _redacted_object(value)
            )
        if record.exc_info:
            event["exception"] = redact_tokens(self.formatException(record.exc_info))
        return orjson.dumps(event, default=str).decode()


_SCALARS: Final = frozenset({int, float, bool, type(None)})


def _redacted_object(value: Any) -> Any:
    """A dict or a list (any object) may hold a token: the JSON it is written as is
    redacted, and written as that text if anything was hidden."""
    if isinstance(value, str):
        return redact_tokens(value)  # a str subclass
    try:
        text = orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # too deep, a wide integer: written as its str
        return redact_tokens(str(value))
    hidden = redact_tokens(text)
    return value if hidden == text else hidden


class TextFormatter(logging.Formatter):
    """Plain text, coloured by level on a terminal, ``extra`` fields as key=value."""

    def __init__(self, colour: bool) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        self._colour = colour

    def format(self, record: logging.LogRecord) -> str:
        line = redact_tokens(super().format(record))
        extra = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        if extra:
            line = f"{line} [{redact_tokens(extra)}]"
        colour = _COLOURS.get(record.levelname) if self._colour else None
        return f"{colour}{line}\033[0m" if colour else line


def configure_logging(
    level: str,
    log_format: str = "auto",
    levels: Mapping[str, str] | None = None,
    stream: TextIO | None = None,
    *,
    token_fields: Iterable[str] = (),
) -> None:
    """Install one handler on the root logger (replacing earlier ones).

    ``token_fields``: the body fields the queues read tokens from; their values are
    hidden in every line, like those of fields named ``*Token`` (``TaskToken``).
    """
    register_token_fields(token_fields)
    stream = stream or sys.stderr
    tty = stream.isatty()
    use_json = log_format == "json" or (log_format == "auto" and not tty)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter(colour=tty))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # botocore logs whole requests and responses at DEBUG: keep it quieter unless a
    # per-logger level says otherwise (what it then shows: docs/operations.md).
    for noisy in ("botocore", "aiobotocore", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLevelName(level)))
    # "Found credentials in environment variables." at INFO on every start and every
    # command: the broker says where its credentials came from once, at DEBUG
    # (``broker.aws.clients``), so these loggers only speak up about trouble.
    for chatty in _CREDENTIAL_LOGGERS:
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    for name, name_level in (levels or {}).items():
        logging.getLogger(name).setLevel(name_level.upper())
