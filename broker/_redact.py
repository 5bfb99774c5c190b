"""Task tokens are credentials: this is the one place that decides how they appear in logs."""

from __future__ import annotations

import hashlib
import json
from urllib.parse import quote, quote_plus

__all__ = ["redact", "token_ref"]


def token_ref(token: str) -> str:
    """A short, stable, non-reversible reference to a token, safe for logs and errors.

    A hash rather than a prefix: token prefixes are shared by every task of an
    execution, so a prefix would neither identify the task nor be safe to publish.
    """
    digest = hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=6).hexdigest()
    return f"tok:{digest}"


def redact(text: str, token: str | None) -> str:
    """``text`` with ``token`` replaced by its ``token_ref`` wherever it appears.

    For text the broker sends on (a failure's cause, a dead-letter copy's detail):
    a handler's exception message may quote its own token, whole or as a JSON string,
    a URL or a form field.  Redact before cutting the text, so no prefix of it is left.
    """
    if not token:
        return text
    ref = token_ref(token)
    spellings = {token, json.dumps(token)[1:-1], quote(token, safe=""), quote_plus(token, safe="")}
    for spelling in sorted(spellings, key=len, reverse=True):
        if spelling in text:
            text = text.replace(spelling, ref)
    return text
