"""What both fakes share: AWS-shaped errors, and scripted faults and latency per call."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from botocore.exceptions import ClientError

__all__ = ["Faults", "client_error"]


def client_error(
    code: str, message: str = "", *, status: int = 400, op: str = "Call"
) -> ClientError:
    """A botocore ``ClientError`` as AWS would raise it."""
    response: Any = {
        "Error": {"Code": code, "Message": message or code},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, op)


class Faults:
    """Scripted failures and latency shared by both fakes."""

    def __init__(self) -> None:
        self.latency_s = 0.0
        #: Extra latency of one API (botocore name), on top of ``latency_s``.
        self.api_latency_s: dict[str, float] = {}
        self.calls: Counter[str] = Counter()
        self._scripted: dict[str, list[BaseException]] = defaultdict(list)
        self._slow: dict[str, list[float]] = defaultdict(list)
        self._in_flight: Counter[str] = Counter()
        self.max_in_flight: Counter[str] = Counter()

    def fail_next(self, api: str, error: BaseException, times: int = 1) -> None:
        """Make the next ``times`` calls of ``api`` (botocore name) raise ``error``."""
        self._scripted[api].extend([error] * times)

    def slow_next(self, api: str, seconds: float, times: int = 1) -> None:
        """Make the next ``times`` calls of ``api`` take ``seconds`` longer."""
        self._slow[api].extend([seconds] * times)

    @asynccontextmanager
    async def _call(self, api: str) -> AsyncIterator[None]:
        self.calls[api] += 1
        self._in_flight[api] += 1
        self.max_in_flight[api] = max(self.max_in_flight[api], self._in_flight[api])
        try:
            latency_s = self.latency_s + self.api_latency_s.get(api, 0.0)
            if self._slow[api]:
                latency_s += self._slow[api].pop(0)
            if latency_s:
                await anyio.sleep(latency_s)
            if self._scripted[api]:
                raise self._scripted[api].pop(0)
            yield
        finally:
            self._in_flight[api] -= 1
