"""Task tokens are credentials: this is the one place that decides how they appear in logs.

``redact`` is applied to every log line (observability/logs.py), every text a span records
(observability/tracing.py) and, under ``broker run``, everything written to stdout and
stderr (observability/guard.py).  It replaces, by their ``token_ref``:

1. every token this process holds (the messages in hand and the last ones released), by
   content: any run of 19 or more of its characters, raw or after undoing percent-encoding,
   backslash escapes or base64 (observability/content.py, observability/held.py);
2. the token of the message being handled, in its exact spellings (whole, as a JSON
   string, in a URL or a form field): also a token too short to be matched by content;
3. the value of every field whose name says it is a token or a receipt handle
   (``"TaskToken": "…"``, ``'taskToken': '…'``, ``MyTaskToken=…``,
   ``<ReceiptHandle>…</ReceiptHandle>``, ``X-Amz-Security-Token``, a queue's own
   ``token_fields``), however deeply the JSON around it is escaped.  This is what keeps
   botocore's DEBUG lines safe: they print request and response bodies (a ReceiveMessage
   answer holds every message body) before any of their tokens is held;
4. the access key id in an ``Authorization`` header's ``Credential=``;
5. anything token-like by length alone (120+ base64-ish characters).

``redact_token`` applies rules 1 and 2 only, to the texts the broker sends on (a failure's
cause, a dead-letter copy's detail): they are the handler's data.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import quote, quote_plus

from broker.observability.content import by_content
from broker.observability.held import token_ref

__all__ = ["loggable", "redact", "redact_token", "register_token_fields", "token_ref"]

#: Text from a message (a type nobody registered, a parse error quoting the body) is cut
#: to this many characters before it is logged: a hostile message must not write 10 KB
#: into every line about it.
_LOGGED_CHARS: Final = 120


def loggable(text: str, limit: int = _LOGGED_CHARS) -> str:
    """``text`` from a message, safe in one log line: control characters (newlines)
    escaped, cut to ``limit`` characters with the full length said."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
    return shown if len(text) <= limit else f"{shown}… ({len(text)} chars)"


# Step Functions tokens are long base64-ish strings (hundreds of characters).  Anything
# that long in a log line is treated as a token: a false positive only shortens a blob.
_LONG_SECRET_CHARS: Final = 120
_LONG_SECRET: Final = re.compile(rf"[A-Za-z0-9+/_\-]{{{_LONG_SECRET_CHARS},}}={{0,2}}")
_REF: Final = r"tok:[0-9a-f]{12}"

# A quote as it appears after any depth of escaping: JSON in JSON in a Python repr gives
# runs of backslashes; XML and URL encodings give &quot; and %22.
_QUOTE: Final = r"""(?:\\*["']|&quot;|&\#3[49];|%22|%27)"""
_SEPARATOR: Final = rf"(?>{_QUOTE}?[ \t]*(?:[:=]|%3[Aa]|%3[Dd])[ \t]*(?:b(?={_QUOTE}))?{_QUOTE}?|>)"
# A value ends at a quote, an escape, a space or a delimiter; an escaped slash (``\/``)
# is part of it.
_VALUE: Final = r"""(?:\\+/|(?!%2[27])[^"'\\\s,;&<>}\])])+"""
# Field names that always hold a credential: *token (TaskToken, taskToken, MyTaskToken,
# X-Amz-Security-Token, nextToken: a pagination token, harmless to hide) and receipt
# handles (anyone holding one can delete or hide the message).
_SECRET_NAMES: Final = r"[\w\-]*token|receipt_?handle"  # noqa: S105 - a pattern of names

_names: set[str] = set()
_field_value: re.Pattern[str] = re.compile("")
#: A word one of which a text must contain for ``_field_value`` to match in it (same
#: flags): searching for it first spares the full expression on almost every log line.
_name_word: re.Pattern[str] = re.compile("")


def _compile(extra: Iterable[str]) -> re.Pattern[str]:
    names = "|".join([_SECRET_NAMES, *(re.escape(name) for name in sorted(extra))])
    return re.compile(
        rf"(?<![\w\-])(?P<name>{names})(?P<sep>{_SEPARATOR})"
        rf"(?!{_REF}|(?:null|true|false|None)\b)(?P<value>{_VALUE})",
        re.IGNORECASE,
    )


def register_token_fields(names: Iterable[str]) -> None:
    """Also hide the values of these body fields (the queues' ``token_fields``)."""
    global _field_value, _name_word
    _names.update(name for name in names if name)
    _field_value = _compile(_names)
    words = ["token", "receipt", *(re.escape(name) for name in sorted(_names))]
    _name_word = re.compile("|".join(words), re.IGNORECASE)


register_token_fields(())

_CREDENTIAL: Final = re.compile(r"(Credential=)[A-Za-z0-9]+(?=/)")


def redact(text: str, token: str | None = None) -> str:
    """``text`` with ``token``, every token-named field's value and every long secret
    replaced by its ``token_ref``.

    ``token`` and the held tokens go in every spelling (rules 1 and 2).  Redact before
    cutting a text, so that no prefix of a token is left.
    """
    if token:
        text = _by_spelling(text, token)
    if not text:
        return text
    if _name_word.search(text):
        text = _field_value.sub(_replace_value, text)
    if "Credential=" in text:
        text = _CREDENTIAL.sub(r"\1<access-key-id>", text)
    text = by_content(text, token)
    if len(text) < _LONG_SECRET_CHARS:
        return text  # too short to hold a long secret
    return _LONG_SECRET.sub(lambda match: token_ref(match.group(0)), text)


def _replace_value(match: re.Match[str]) -> str:
    return f"{match.group('name')}{match.group('sep')}{token_ref(match.group('value'))}"


def redact_token(text: str, token: str | None) -> str:
    """``text`` without ``token`` or any held token (rules 1 and 2 above): for the texts
    the broker sends on, the handler's data, only tokens go, not what looks like one."""
    if token:
        text = _by_spelling(text, token)
    return by_content(text, token)


def _by_spelling(text: str, token: str) -> str:
    for spelling, ref in _spellings(token):
        if spelling in text:
            text = text.replace(spelling, ref)
    return text


@functools.lru_cache(maxsize=4096)
def _spellings(token: str) -> tuple[tuple[str, str], ...]:
    """Each spelling of ``token`` (longest first) with its ``token_ref``: a message's
    log lines all redact the same token, so this is worked out once per token."""
    ref = token_ref(token)
    spellings = {token, json.dumps(token)[1:-1], quote(token, safe=""), quote_plus(token, safe="")}
    return tuple((spelling, ref) for spelling in sorted(spellings, key=len, reverse=True))
