"""What the seed flows are deployed to and driven through: moto or LocalStack."""

from __future__ import annotations

import threading
from typing import Any, Protocol

__all__ = ["AwsEndpoint", "EndpointClients"]


class AwsEndpoint(Protocol):
    """An emulator on loopback: ``local.moto.EmbeddedAws`` or ``local.localstack.LocalStackAws``."""

    @property
    def region(self) -> str: ...
    @property
    def endpoint_url(self) -> str: ...
    def client(self, service: str) -> Any: ...
    def env(self) -> dict[str, str]: ...


class EndpointClients:
    """Synchronous botocore clients for one emulator, with its dummy credentials.

    One botocore session per emulator: the service models it loads are cached on it. Its
    ``profile`` variable is cut loose from AWS_PROFILE, so a profile named in the
    environment but absent from ~/.aws cannot break a client that needs no profile.
    Clients are thread-safe; creating them from one botocore session is not.
    """

    def __init__(self, credentials: str) -> None:
        self._credentials = credentials
        self._session: Any = None
        self._lock = threading.Lock()

    def create(self, service: str, *, region: str, endpoint_url: str) -> Any:
        with self._lock:
            if self._session is None:
                import botocore.session

                self._session = botocore.session.Session(
                    session_vars={"profile": (None, None, None, None)}
                )
            return self._session.create_client(
                service,
                region_name=region,
                endpoint_url=endpoint_url,
                aws_access_key_id=self._credentials,
                aws_secret_access_key=self._credentials,
            )
