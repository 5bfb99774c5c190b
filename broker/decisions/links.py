"""Decision links: a task token, an action and an expiry, sealed into a URL.

Stateless: everything a link decides is inside it, under AES-GCM (``cryptography``), so
no database is needed and the token never appears in the clear.  The blob is::

    base64url-no-padding( version 1 | key id (4) | nonce (12) | ciphertext + tag (16) )

with the version byte and the key id as associated data, and the plaintext the orjson
of a compact dict (token, action, expiry, subject, details, and the approve output or
the reject error and cause).  ``BROKER_DECISION_KEYS`` lists the keys: the first one
seals new links, every one of them opens links, so a key is rotated by putting a new
one first and dropping the old one once its last link has expired.

What goes in is bounded so that a URL stays under about 8.5 KiB (what proxies and mail
clients pass); a link that would not fit is refused when it is made (``ValueError``:
the handler's bug, not the message's).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker.core.errors import ConfigError
from broker.core.task import DEFAULT_REJECT

__all__ = [
    "KEYS_VARIABLE",
    "MAX_BLOB_CHARS",
    "MAX_CAUSE_CHARS",
    "MAX_DETAILS_CHARS",
    "MAX_ERROR_CHARS",
    "MAX_OUTPUT_BYTES",
    "MAX_SUBJECT_CHARS",
    "Action",
    "DecisionKeys",
    "DecisionLink",
    "DecisionLinks",
    "LinkCodec",
    "LinkMaker",
    "LinkRefused",
    "new_key",
]

KEYS_VARIABLE: Final = "BROKER_DECISION_KEYS"
#: What a link may carry (characters of text, bytes of encoded output).
MAX_SUBJECT_CHARS: Final = 200
MAX_DETAILS_CHARS: Final = 2000
MAX_OUTPUT_BYTES: Final = 2048
#: Step Functions' own limit for ``error``; a cause is kept short for the URL's sake.
MAX_ERROR_CHARS: Final = 256
MAX_CAUSE_CHARS: Final = 1024
#: The sealed plaintext at most: the blob then stays under MAX_BLOB_CHARS.
_MAX_PLAINTEXT_BYTES: Final = 6_400
_VERSION: Final = 1
_KEY_BYTES: Final = 32
_KEY_ID_BYTES: Final = 4
_NONCE_BYTES: Final = 12
_TAG_BYTES: Final = 16
_HEADER_BYTES: Final = 1 + _KEY_ID_BYTES + _NONCE_BYTES
#: The longest blob a link made here can have; anything longer is refused unread.
MAX_BLOB_CHARS: Final = math.ceil((_HEADER_BYTES + _MAX_PLAINTEXT_BYTES + _TAG_BYTES) * 4 / 3)
_MIN_BLOB_BYTES: Final = _HEADER_BYTES + _TAG_BYTES

Action = Literal["approve", "reject"]
RefusalReason = Literal["tampered", "unknown_key", "malformed"]


def new_key() -> str:
    """A fresh key, as ``BROKER_DECISION_KEYS`` takes it (the format of Fernet keys)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(_KEY_BYTES)).decode()


class LinkRefused(Exception):
    """A blob that does not open: forged, altered, sealed by a key not configured, or
    not a blob at all.  The endpoint answers 403 whatever the reason."""

    def __init__(self, reason: RefusalReason) -> None:
        super().__init__(reason)
        self.reason: RefusalReason = reason


@dataclass(frozen=True, slots=True)
class _Key:
    id: bytes
    aead: AESGCM


class DecisionKeys:
    """The configured keys: the first seals, all open (by key id)."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ConfigError(f"{KEYS_VARIABLE}: no key (broker decisions keygen prints one)")
        self._keys = [
            _Key(hashlib.sha256(key).digest()[:_KEY_ID_BYTES], AESGCM(key)) for key in keys
        ]
        self._by_id = {key.id: key for key in self._keys}
        if len(self._by_id) != len(self._keys):
            raise ConfigError(f"{KEYS_VARIABLE}: the same key is listed twice")

    @classmethod
    def parse(cls, raw: Sequence[str]) -> DecisionKeys:
        """Keys as configured: URL-safe base64 of 32 bytes each.  The error names the
        position of a bad key, never its value."""
        keys = []
        for index, text in enumerate(raw):
            try:
                key = base64.urlsafe_b64decode(text.strip().encode("ascii"))
            except (binascii.Error, UnicodeEncodeError, ValueError):
                key = b""
            if len(key) != _KEY_BYTES:
                raise ConfigError(
                    f"{KEYS_VARIABLE}: key {index} is not {_KEY_BYTES} bytes in URL-safe "
                    f"base64 (broker decisions keygen prints one)"
                )
            keys.append(key)
        return cls(keys)

    @property
    def sealing(self) -> _Key:
        return self._keys[0]

    def opening(self, key_id: bytes) -> _Key | None:
        return self._by_id.get(key_id)


@dataclass(frozen=True, slots=True)
class DecisionLink:
    """What a link opens to."""

    token: str
    action: Action
    #: When the link stops deciding (UTC, whole seconds).
    expires_at: datetime
    subject: str = ""
    details: str = ""
    #: approve: the JSON object SendTaskSuccess sends (``decided_at`` is added then).
    output: Mapping[str, Any] | None = None
    #: reject: what SendTaskFailure sends.
    error: str | None = None
    cause: str | None = None


@dataclass(frozen=True, slots=True)
class DecisionLinks:
    """What ``task.decision_links()`` returns: the two URLs to send the person."""

    approve_url: str
    reject_url: str
    expires_at: datetime


class LinkCodec:
    """Seals ``DecisionLink`` into URLs under ``base_url`` and opens their blobs."""

    def __init__(
        self, keys: DecisionKeys, base_url: str, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._keys = keys
        self._prefix = f"{base_url.rstrip('/')}/decisions/"
        self._clock = clock
        parts = urlsplit(base_url)
        #: What a browser sends as ``Origin`` from the links' own pages.
        self.origin = f"{parts.scheme}://{parts.netloc}".lower() if parts.netloc else ""

    def make(self, link: DecisionLink) -> str:
        """The link's URL.  ``ValueError`` if it carries more than a link may."""
        plaintext = orjson.dumps(_plain(link))
        if len(plaintext) > _MAX_PLAINTEXT_BYTES:
            raise ValueError(
                f"a decision link carries at most {_MAX_PLAINTEXT_BYTES} bytes (token, "
                f"subject, details, output); this one {len(plaintext)}: shorten the details"
            )
        key = self._keys.sealing
        header = bytes([_VERSION]) + key.id
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = key.aead.encrypt(nonce, plaintext, header)
        return (
            self._prefix + base64.urlsafe_b64encode(header + nonce + sealed).rstrip(b"=").decode()
        )

    def open(self, blob: str) -> DecisionLink:
        """What the blob says; ``LinkRefused`` unless a configured key sealed it as is.

        Expiry is the caller's to check (``expired``): an expired link is answered
        without calling Step Functions, but differently from a forged one.
        """
        if not blob or len(blob) > MAX_BLOB_CHARS:
            raise LinkRefused("malformed")
        try:
            raw = base64.urlsafe_b64decode(blob.encode("ascii") + b"=" * (-len(blob) % 4))
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise LinkRefused("malformed") from None
        if len(raw) < _MIN_BLOB_BYTES or raw[0] != _VERSION:
            raise LinkRefused("malformed")
        header, nonce, sealed = (
            raw[: 1 + _KEY_ID_BYTES],
            raw[1 + _KEY_ID_BYTES : _HEADER_BYTES],
            raw[_HEADER_BYTES:],
        )
        key = self._keys.opening(header[1:])
        if key is None:
            raise LinkRefused("unknown_key")
        try:
            plaintext = key.aead.decrypt(nonce, sealed, header)
        except InvalidTag:
            raise LinkRefused("tampered") from None
        try:
            return _link(orjson.loads(plaintext))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            # Sealed by one of our keys but not by this code: refuse, don't guess.
            raise LinkRefused("malformed") from None

    def blob_of(self, url_or_blob: str) -> str:
        """The blob of a link's URL (any base), or the argument if it is one already."""
        return url_or_blob.rpartition("/decisions/")[2].partition("?")[0]

    def expired(self, link: DecisionLink) -> bool:
        return link.expires_at.timestamp() <= self._clock()


def _plain(link: DecisionLink) -> dict[str, Any]:
    plain: dict[str, Any] = {
        "t": link.token,
        "a": link.action,
        "x": int(link.expires_at.timestamp()),
        "s": link.subject,
        "d": link.details,
    }
    if link.action == "approve":
        plain["o"] = dict(link.output or {})
    else:
        plain["e"], plain["c"] = link.error or "", link.cause or ""
    return plain


def _link(plain: dict[str, Any]) -> DecisionLink:
    action = plain["a"]
    if action not in ("approve", "reject") or not isinstance(plain["t"], str):
        raise ValueError("not a decision")
    expires_at = datetime.fromtimestamp(int(plain["x"]), UTC)
    subject, details = str(plain.get("s", "")), str(plain.get("d", ""))
    if action == "approve":
        output = plain["o"]
        if not isinstance(output, dict):
            raise ValueError("approve output is not an object")
        return DecisionLink(plain["t"], "approve", expires_at, subject, details, output=output)
    return DecisionLink(
        plain["t"],
        "reject",
        expires_at,
        subject,
        details,
        error=str(plain["e"]),
        cause=str(plain["c"]),
    )


class LinkMaker:
    """``task.decision_links()``: both links of one task, checked and sealed."""

    def __init__(
        self, codec: LinkCodec, default_ttl_s: float, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._codec = codec
        self._default_ttl_s = default_ttl_s
        self._clock = clock

    def links(
        self,
        token: str,
        *,
        subject: str = "",
        details: str = "",
        approve: Mapping[str, Any] | None = None,
        reject: tuple[str, str] = DEFAULT_REJECT,
        ttl_s: float | None = None,
    ) -> DecisionLinks:
        ttl_s = self._default_ttl_s if ttl_s is None else ttl_s
        if not ttl_s > 0:
            raise ValueError(f"decision_links: ttl_s must be > 0, got {ttl_s!r}")
        _check_text("subject", subject, MAX_SUBJECT_CHARS)
        _check_text("details", details, MAX_DETAILS_CHARS)
        output = {"approved": True} if approve is None else approve
        if not isinstance(output, Mapping):
            raise TypeError("decision_links: approve must be a JSON object (a mapping)")
        try:
            encoded = orjson.dumps(output)
        except TypeError as exc:
            raise ValueError(f"decision_links: approve is not JSON: {exc}") from exc
        if len(encoded) > MAX_OUTPUT_BYTES:
            raise ValueError(
                f"decision_links: approve encodes to {len(encoded)} bytes, at most "
                f"{MAX_OUTPUT_BYTES} fit in a link"
            )
        error, cause = reject
        _check_text("reject error", error, MAX_ERROR_CHARS)
        _check_text("reject cause", cause, MAX_CAUSE_CHARS)
        if not error:
            raise ValueError("decision_links: reject error must not be empty")
        expires_at = datetime.fromtimestamp(int(self._clock() + ttl_s), UTC)
        approving = DecisionLink(
            token, "approve", expires_at, subject, details, output=orjson.loads(encoded)
        )
        rejecting = DecisionLink(
            token, "reject", expires_at, subject, details, error=error, cause=cause
        )
        return DecisionLinks(
            approve_url=self._codec.make(approving),
            reject_url=self._codec.make(rejecting),
            expires_at=expires_at,
        )


def _check_text(what: str, value: object, limit: int) -> None:
    if not isinstance(value, str):
        raise TypeError(f"decision_links: {what} must be a string, got {type(value).__name__}")
    if len(value) > limit:
        raise ValueError(
            f"decision_links: {what} has {len(value)} characters, at most {limit} fit in a link"
        )
