"""Rule 1 of the redaction (observability/redact.py): the held tokens, by content.

A text is searched for runs of a held token's characters (``Index.spans``, held.py) as
written, and in the words that decode to something else: percent-encoding undone
repeatedly, backslash escapes (JSON's escaped slash, ``\\u`` escapes, JSON in JSON), and
base64 or base64url runs of 24 or more characters at each of their four alignments.  A
run found as written is replaced exactly, by the token's ``token_ref``; a word or a base64
run that only decodes to one is replaced whole.  So a token written in halves, as a URL,
in a traceback, from another thread or an orphaned asyncio task leaves no 19 characters
of itself in a row behind, and a line that holds none costs a few regex scans.
"""

from __future__ import annotations

import binascii
import functools
import re
from typing import Final
from urllib.parse import unquote

from broker.observability.held import MIN_RUN, Index, index_of, token_ref

__all__ = ["by_content"]

_HELD: Final = index_of()
_HELD_ONLY: Final = [_HELD]
#: A word: what a decoded match replaces whole (a URL's query value, a JSON string).
_WORD: Final = re.compile(rf"[^\s\"'<>()\[\]{{}},;|&?]{{{MIN_RUN},}}")
#: base64 or base64url of at least 18 bytes: shorter cannot hold 19 token characters
#: whatever its alignment.
_BASE64_CHARS: Final = 24
_BASE64: Final = re.compile(rf"[A-Za-z0-9+/_\-]{{{_BASE64_CHARS},}}")
#: Hex and dashes (ids, hashes, UUIDs): valid base64, but the base64 of text never is.
_HEXISH: Final = re.compile(r"[0-9A-Fa-f\-]+")
_BACKSLASH_U: Final = re.compile(r"\\+u([0-9A-Fa-f]{4})")
_BACKSLASH: Final = re.compile(r"\\+(.)", re.DOTALL)
_URLSAFE: Final = str.maketrans("-_", "+/")


def by_content(text: str, token: str | None) -> str:
    """``text`` with every run of a held token's characters (and of ``token``'s) replaced."""
    if len(text) < MIN_RUN:
        return text  # too short to hold a run (most of a line's fields)
    own = _own(token) if token else None
    if own is None:
        if not _HELD.tokens:
            return text  # nothing held: an idle broker, a command
        indexes = _HELD_ONLY
    else:
        indexes = [_HELD, own]
    redacted = text
    # Split in C first: most lines have no chunk long enough to hold a run.  A chunk
    # without a capital letter (an id, a path) is only searched as written: the base64 of
    # a token has capitals but by a chance of 1 in 250,000, and its percent-encoding keeps
    # the token's own.
    for chunk in text.split():
        if len(chunk) < MIN_RUN:
            continue
        if chunk.islower() and "%" not in chunk and "\\" not in chunk:
            hidden = _raw(chunk, indexes)
        else:
            hidden = _WORD.sub(lambda word: _word(word.group(0), indexes), chunk)
        if hidden != chunk:
            redacted = redacted.replace(chunk, hidden)
    return redacted


def _raw(word: str, indexes: list[Index]) -> str:
    for index in indexes:
        spans = index.spans(word)
        if spans:
            word = _swap(word, spans)
    return word


def _word(word: str, indexes: list[Index]) -> str:
    if "%" in word or "\\" in word:
        # Before the raw runs: a word that decodes to a token goes whole, with the short
        # raw pieces between its escapes.
        plain = _unescaped(word)
        if plain != word:
            token = _found(plain, indexes) or _in_base64_runs(plain, indexes)
            if token is not None:
                return token_ref(token)
    word = _raw(word, indexes)
    if len(word) < _BASE64_CHARS or _HEXISH.fullmatch(word):
        return word
    for run in _BASE64.findall(word):
        token = None if _HEXISH.fullmatch(run) else _in_base64(run, indexes)
        if token is not None:
            word = word.replace(run, token_ref(token))
    return word


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


def _in_base64_runs(text: str, indexes: list[Index]) -> str | None:
    for run in _BASE64.findall(text):
        token = None if _HEXISH.fullmatch(run) else _in_base64(run, indexes)
        if token is not None:
            return token
    return None


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
