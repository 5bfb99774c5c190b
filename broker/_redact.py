"""Task tokens are credentials: this is the one place that decides how they appear in logs."""

from __future__ import annotations

import hashlib

__all__ = ["token_ref"]


def token_ref(token: str) -> str:
    """A short, stable, non-reversible reference to a token, safe for logs and errors.

    A hash rather than a prefix: token prefixes are shared by every task of an
    execution, so a prefix would neither identify the task nor be safe to publish.
    """
    digest = hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=6).hexdigest()
    return f"tok:{digest}"
