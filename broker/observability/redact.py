"""Task tokens are credentials: this is the one place that decides how they appear in logs.

``redact`` is applied to every log line (broker/observability/logs.py), to every text a span
records (broker/observability/tracing.py) and, under ``broker run``, to everything written
to stdout and stderr (broker/observability/guard.py).  It replaces, by their ``token_ref``:

1. every token this process holds (broker/observability/held.py: the messages in hand and
   the last released ones), by content: any run of 19 or more of a token's own characters
   in a row, as written or after undoing the escapes a handler is likely to apply
   (percent-encoding, repeatedly; backslash escapes such as JSON's escaped slash; base64 and
   base64url).  A run found raw is replaced exactly; a word that only decodes to one
   goes whole.  So a token quoted in halves, as a URL, in a traceback, from another
   thread or an orphaned asyncio task leaves no 19 characters of itself behind;
2. the token of the message being handled, in its exact spellings (whole, as a JSON
   string, in a URL or a form field): a token too short to be matched by content (the
   emulators' are 36-character UUIDs, matched by both rules; a test's may be shorter);
3. the value of every field whose name says it is a token or a receipt handle
   (``"TaskToken": "…"``, ``'taskToken': '…'``, ``MyTaskToken=…``,
   ``<ReceiptHandle>…</ReceiptHandle>``, ``X-Amz-Security-Token``, a queue's own
   ``token_fields``), however deeply the JSON around it is escaped.  This is what keeps
   botocore's DEBUG lines safe: they print request and response bodies (a
   ReceiveMessage answer holds every message body) before any of their tokens is held;
4. the access key id in an ``Authorization`` header's ``Credential=``;
5. anything token-like by length alone (120+ base64-ish characters).

``redact_token`` applies rules 1 and 2 only, to the texts the broker sends on (a
failure's cause, a dead-letter copy's detail): they are the handler's data.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import json
import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import quote, quote_plus, unquote

from broker.observability.held import MIN_RUN, Index, index_of

__all__ = ["loggable", "redact", "redact_token", "register_token_fields", "token_ref"]


def token_ref(token: str) -> str:
    """A short, stable, non-reversible reference to a token, safe for logs and errors.

    A hash rather than a prefix: token prefixes are shared by every task of an
    execution, so a prefix would neither identify the task nor be safe to publish.
    """
    digest = hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=6).hexdigest()
    return f"tok:{digest}"


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

    ``token`` is replaced in every spelling a handler's message may quote it in: whole,
    as a JSON string, in a URL or a form field.  Redact before cutting a text, so that no
    prefix of a token is left.
    """
    if token:
        text = _by_spelling(text, token)
    if not text:
        return text
    if _name_word.search(text):
        text = _field_value.sub(_replace_value, text)
    if "Credential=" in text:
        text = _CREDENTIAL.sub(r"\1<access-key-id>", text)
    text = _by_content(text, token)
    if len(text) < _LONG_SECRET_CHARS:
        return text  # too short to hold a long secret
    return _LONG_SECRET.sub(lambda match: token_ref(match.group(0)), text)


def _replace_value(match: re.Match[str]) -> str:
    return f"{match.group('name')}{match.group('sep')}{token_ref(match.group('value'))}"


def redact_token(text: str, token: str | None) -> str:
    """``text`` without ``token`` or any held token (rules 1 and 2 above).

    For the texts the broker sends on (a failure's cause, a dead-letter copy's detail):
    they are the handler's data, so only tokens go, not whatever merely looks like one
    (``redact``'s other rules are for log lines).
    """
    if token:
        text = _by_spelling(text, token)
    return _by_content(text, token)


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


# ---------------------------------------------------------------- by content (rule 1)

_HELD: Final = index_of()
#: A word: what a decoded match replaces whole (a URL's query value, a JSON string).
_WORD: Final = re.compile(rf"[^\s\"'<>()\[\]{{}},;|&?]{{{MIN_RUN},}}")
#: base64 or base64url of at least 18 bytes: shorter cannot hold 19 token characters
#: whatever its alignment.
_BASE64: Final = re.compile(r"[A-Za-z0-9+/_\-]{24,}")
#: Hex and dashes (ids, hashes, UUIDs): valid base64, but the base64 of text never is.
_HEXISH: Final = re.compile(r"[0-9A-Fa-f\-]+")
_BACKSLASH_U: Final = re.compile(r"\\+u([0-9A-Fa-f]{4})")
_BACKSLASH: Final = re.compile(r"\\+(.)", re.DOTALL)
_URLSAFE: Final = str.maketrans("-_", "+/")


def _by_content(text: str, token: str | None) -> str:
    """``text`` with every run of a held token's characters (and of ``token``'s) replaced."""
    held = _HELD
    own = _own(token) if token else None
    if (own is None and not held.grams) or len(text) < MIN_RUN:
        return text  # nothing held (an idle broker, a command), or too short to hold one
    indexes = [held] if own is None else [held, own]
    if "%" in text or "\\" in text:
        # Before the raw runs: a word that decodes to a token goes whole, with the short
        # raw pieces between its escapes.
        text = _WORD.sub(lambda word: _decoded_word(word.group(0), indexes), text)
    for index in indexes:
        spans = index.spans(text)
        if spans:
            text = _swap(text, spans)
    if _BASE64.search(text) is None:
        return text
    return _BASE64.sub(lambda run: _base64_run(run.group(0), indexes), text)


def _own(token: str) -> Index | None:
    """An index of ``token`` when it is long enough and not held (a cause redacted after
    its message's attempt, a test's direct call)."""
    if len(token) < MIN_RUN or token in _HELD.tokens:
        return None
    return _index_of_one(token)


@functools.lru_cache(maxsize=64)
def _index_of_one(token: str) -> Index:
    return Index((token,))


def _swap(text: str, spans: list[tuple[int, int, str]]) -> str:
    for start, end, token in reversed(spans):
        text = f"{text[:start]}{token_ref(token)}{text[end:]}"
    return text


def _found(text: str, indexes: list[Index]) -> str | None:
    """The first token a piece of ``text`` (already decoded) belongs to."""
    for index in indexes:
        spans = index.spans(text)
        if spans:
            return spans[0][2]
    return None


def _unescaped(text: str) -> str:
    """``text`` with percent-encoding and backslash escapes undone, a few layers deep."""
    for _ in range(4):
        plain = unquote(text) if "%" in text else text
        if "\\" in plain:
            plain = _BACKSLASH_U.sub(lambda m: chr(int(m.group(1), 16)), plain)
            plain = _BACKSLASH.sub(r"\1", plain)
        if plain == text:
            break
        text = plain
    return text


def _decoded_word(word: str, indexes: list[Index]) -> str:
    if "%" not in word and "\\" not in word:
        return word
    plain = _unescaped(word)
    token = _found(plain, indexes)
    if token is None and _BASE64.search(plain):
        token = next((t for run in _BASE64.findall(plain) if (t := _in_base64(run, indexes))), None)
    return word if token is None else token_ref(token)


def _base64_run(run: str, indexes: list[Index]) -> str:
    if _HEXISH.fullmatch(run):
        return run
    token = _in_base64(run, indexes)
    return run if token is None else token_ref(token)


def _in_base64(run: str, indexes: list[Index]) -> str | None:
    """The token whose piece ``run`` encodes (at any of its four alignments), if any."""
    normal = run.translate(_URLSAFE)
    for offset in range(4):
        chunk = normal[offset:]
        try:
            plain = binascii.a2b_base64(chunk[: len(chunk) // 4 * 4]).decode("latin-1")
        except binascii.Error:
            continue
        token = _found(plain, indexes)
        if token is None and ("%" in plain or "\\" in plain):
            token = _found(_unescaped(plain), indexes)
        if token is not None:
            return token
    return None
