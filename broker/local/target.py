"""Which local endpoint the ``broker local`` commands talk to, and the shell lines for it.

Every endpoint is checked by ``local.probe`` (loopback only, which emulator; re-exported
here) before a call is made, and the clients carry dummy credentials. ``shell_lines`` is
what ``broker local up`` and ``broker local env`` print for ``eval``.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any, Final

from broker.local.endpoint import EndpointClients
from broker.local.env import AWS_OVERRIDES, endpoint_env, loopback_without_proxy
from broker.local.probe import (
    DEFAULT_LOCALSTACK,
    LocalEndpointError,
    emulator_kind,
    localstack_endpoint,
    localstack_health,
    loopback_endpoint,
    not_listening,
)

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
DEFAULT_REGION: Final = "us-east-1"
#: Both emulators accept any credentials; these are what each one's docs use.
CREDENTIALS: Final = {"moto": "testing", "localstack": "test"}


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
