"""SigV4 for the lean clients: POST / with a JSON body, one service and region.

The signing key is derived once per day and secret (AWS allows it; botocore derives it
on every request), and the canonical request of these fixed-shape calls is built from
strings, not request objects.  ``tests/unit/test_lean_signing.py`` checks every
signature against botocore's ``SigV4Auth`` for the same request.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Final, Protocol
from urllib.parse import urlsplit

__all__ = ["Credentials", "SigV4", "host_header"]

_ALGORITHM: Final = "AWS4-HMAC-SHA256"
JSON_1_0: Final = "application/x-amz-json-1.0"


def host_header(url: str) -> str:
    """The ``Host`` botocore signs for ``url``: lower-case, without the scheme's default port."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # IPv6
    default_port = {"http": 80, "https": 443}.get(parts.scheme)
    if parts.port is not None and parts.port != default_port:
        host = f"{host}:{parts.port}"
    return host


class Credentials(Protocol):
    """What botocore's frozen credentials carry (``ReadOnlyCredentials``)."""

    @property
    def access_key(self) -> str | None: ...
    @property
    def secret_key(self) -> str | None: ...
    @property
    def token(self) -> str | None: ...


class SigV4:
    """Signed headers for POST / of one service, with fixed extra signed headers."""

    def __init__(
        self,
        region: str,
        service: str,
        *,
        content_type: str = JSON_1_0,
        extra_headers: Mapping[str, str] | None = None,
    ) -> None:
        self.region = region
        self.service = service
        self._content_type = content_type
        #: Headers sent and signed on every call besides the standard ones (lower-case).
        self._extra = {name.lower(): value for name, value in (extra_headers or {}).items()}
        self._key_for: tuple[str | None, str] = ("", "")
        self._key = b""

    def _signing_key(self, secret_key: str | None, day: str) -> bytes:
        if self._key_for != (secret_key, day):
            key = f"AWS4{secret_key}".encode()
            for part in (day, self.region, self.service, "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._key_for, self._key = (secret_key, day), key
        return self._key

    def headers(
        self, credentials: Credentials, host: str, target: str, body: bytes, amz_date: str
    ) -> dict[str, str]:
        """The request's headers, ``Authorization`` included (``amz_date``: 20261123T120000Z)."""
        day = amz_date[:8]
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        token = credentials.token
        signed = {
            "content-type": self._content_type,
            "host": host,
            "x-amz-date": amz_date,
            "x-amz-target": target,
            **self._extra,
        }
        if token:
            signed["x-amz-security-token"] = token
        names = sorted(signed)
        signed_names = ";".join(names)
        canonical = "\n".join(
            (
                "POST",
                "/",
                "",
                "".join(f"{name}:{signed[name]}\n" for name in names),
                signed_names,
                hashlib.sha256(body).hexdigest(),
            )
        )
        to_sign = "\n".join(
            (_ALGORITHM, amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest())
        )
        signature = hmac.new(
            self._signing_key(credentials.secret_key, day), to_sign.encode(), hashlib.sha256
        ).hexdigest()
        headers = {
            "Content-Type": self._content_type,
            "X-Amz-Date": amz_date,
            "X-Amz-Target": target,
            "Authorization": (
                f"{_ALGORITHM} Credential={credentials.access_key}/{scope}, "
                f"SignedHeaders={signed_names}, Signature={signature}"
            ),
            **self._extra,
        }
        if token:
            headers["X-Amz-Security-Token"] = token
        return headers
