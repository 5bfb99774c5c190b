"""Which local endpoint the ``broker local`` commands talk to, and the shell lines for it.

A local tool must never reach a real account: every endpoint is checked to be loopback
(``loopback_endpoint``) before a call is made, and the clients carry dummy credentials.
``emulator_kind`` tells moto (no GetActivityTask) from LocalStack; ``shell_lines`` is what
``broker local up`` and ``broker local env`` print for ``eval``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any, Final, Literal

from broker.local.endpoint import EndpointClients
from broker.local.env import AWS_OVERRIDES, endpoint_env, loopback_without_proxy

__all__ = [
    "DEFAULT_LOCALSTACK",
    "DEFAULT_PORT",
    "DEFAULT_REGION",
    "EmulatorAws",
    "LocalEndpointError",
    "LoopbackAws",
    "emulator_kind",
    "localstack_endpoint",
    "localstack_health",
    "loopback_endpoint",
    "not_listening",
    "shell_lines",
]

#: ``broker local up``'s port: not LocalStack's 4566, the broker's 8080 / 8081, nor
#: moto_server's own 5000 (taken by AirPlay on macOS).
DEFAULT_PORT: Final = 5055
DEFAULT_LOCALSTACK: Final = "http://127.0.0.1:4566"
DEFAULT_REGION: Final = "us-east-1"
#: Both emulators accept any credentials; these are what each one's docs use.
CREDENTIALS: Final = {"moto": "testing", "localstack": "test"}
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


class EmulatorAws:
    """An ``AwsEndpoint`` for an emulator already running, with dummy credentials."""

    def __init__(self, endpoint_url: str, *, region: str, credentials: str = "test") -> None:
        self._endpoint_url = endpoint_url
        self._region = region
        self._credentials = credentials
        self._clients = EndpointClients(credentials)

    @property
    def region(self) -> str:
        return self._region

    @property
    def endpoint_url(self) -> str:
        return self._endpoint_url

    def env(self) -> dict[str, str]:
        return endpoint_env(self._endpoint_url, region=self._region, credentials=self._credentials)

    def client(self, service: str) -> Any:
        return self._clients.create(service, region=self._region, endpoint_url=self._endpoint_url)


class LoopbackAws(EmulatorAws):
    """``EmulatorAws`` that refuses, before any call, an endpoint not on loopback."""

    def __init__(self, endpoint_url: str, *, region: str, credentials: str = "test") -> None:
        super().__init__(loopback_endpoint(endpoint_url), region=region, credentials=credentials)


def shell_lines(env: Mapping[str, str]) -> list[str]:
    """``unset`` for the user's own AWS set-up that would win over the endpoint or add a
    session token to the dummy credentials, then ``export`` for ``env`` and NO_PROXY."""
    cleared = [name for name in AWS_OVERRIDES if name not in env]
    values = {**env, **loopback_without_proxy()}
    return [
        f"unset {' '.join(cleared)}",
        *(f"export {name}={shlex.quote(value)}" for name, value in values.items()),
    ]
