"""Is a local endpoint safe and alive: loopback only, which emulator, what it serves.

A local tool must never reach a real account: ``loopback_endpoint`` refuses any URL
not on this machine before a call is made.  ``not_listening`` says at once when nothing
answers; ``emulator_kind`` tells moto (no GetActivityTask) from LocalStack.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Final, Literal

__all__ = [
    "DEFAULT_LOCALSTACK",
    "Kind",
    "LocalEndpointError",
    "emulator_kind",
    "localstack_endpoint",
    "localstack_health",
    "loopback_endpoint",
    "not_listening",
]

DEFAULT_LOCALSTACK: Final = "http://127.0.0.1:4566"
_REQUIRED_SERVICES: Final = ("sqs", "stepfunctions", "sns")
# Loopback only: a proxy from the environment must never see emulator traffic.
_LOOPBACK_OPENER: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))

Kind = Literal["moto", "localstack", "other"]


class LocalEndpointError(Exception):
    """A refused or unusable endpoint; its message is the one line the user sees."""


def localstack_endpoint() -> str:
    """``LOCALSTACK_ENDPOINT``, else LocalStack's default gateway on loopback."""
    return os.environ.get("LOCALSTACK_ENDPOINT") or DEFAULT_LOCALSTACK


def localstack_health(endpoint: str, *, timeout_s: float = 2.0) -> str | None:
    """``None`` when LocalStack answers with SQS, Step Functions and SNS available, else
    why not."""
    try:
        with _LOOPBACK_OPENER.open(f"{endpoint}/_localstack/health", timeout=timeout_s) as r:
            services = json.load(r).get("services", {})
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"no answer from {endpoint}/_localstack/health ({exc})"
    missing = [s for s in _REQUIRED_SERVICES if services.get(s) not in ("available", "running")]
    if missing:
        return f"LocalStack at {endpoint} does not offer {', '.join(missing)}"
    return None


def loopback_endpoint(url: str) -> str:
    """``url`` without a trailing slash if it is http(s) on a loopback host, else refused."""
    parsed = urllib.parse.urlsplit(url)
    host = parsed.hostname or ""
    if parsed.scheme not in ("http", "https") or not host:
        raise LocalEndpointError(f"{url!r} is not an http:// endpoint URL")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise LocalEndpointError(
            f"{url} is not on loopback: broker local only talks to an emulator on this machine "
            "(127.0.0.1, ::1 or localhost)"
        )
    return url.rstrip("/")


def not_listening(endpoint: str, *, timeout_s: float = 2.0) -> str | None:
    """Why nothing can answer at ``endpoint`` (a loopback URL), or ``None``: one connect,
    so that a stopped emulator is said at once, not after botocore's retries."""
    parsed = urllib.parse.urlsplit(endpoint)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", port), timeout=timeout_s):
            return None
    except OSError as exc:
        return f"no emulator answers at {endpoint} ({exc.strerror or exc})"


def emulator_kind(endpoint: str) -> Kind:
    """LocalStack answers its health route, moto its API page; anything else is ``other``."""
    if localstack_health(endpoint, timeout_s=2.0) is None:
        return "localstack"
    try:
        with _LOOPBACK_OPENER.open(f"{endpoint}/moto-api/", timeout=2.0) as reply:
            return "moto" if reply.status == 200 else "other"
    except (urllib.error.URLError, OSError):
        return "other"
