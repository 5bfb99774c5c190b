"""The lean Step Functions client: SendTaskSuccess / SendTaskFailure / SendTaskHeartbeat.

Every task costs one completion; ``LeanTransport`` sends it (signed JSON, aiohttp) on
the endpoint, credentials, TLS and proxy settings the botocore client resolved.  Every
other call (the activity ones, DescribeActivity at start-up) goes to the botocore
client, ``fallback``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from broker.aws.lean import LeanTransport

__all__ = ["LeanSfn"]


class LeanSfn:
    """``SfnApi`` with the three completion calls lean; the rest on ``fallback``."""

    def __init__(self, transport: LeanTransport, fallback: object) -> None:
        self._transport = transport
        self._fallback = fallback

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fallback, name)

    async def send_task_success(self, *, taskToken: str, output: str) -> Mapping[str, Any]:
        return await self._transport.call(
            "SendTaskSuccess", {"taskToken": taskToken, "output": output}
        )

    async def send_task_failure(
        self, *, taskToken: str, error: str = "", cause: str = ""
    ) -> Mapping[str, Any]:
        params = {"taskToken": taskToken, "error": error, "cause": cause}
        return await self._transport.call("SendTaskFailure", params)

    async def send_task_heartbeat(self, *, taskToken: str) -> Mapping[str, Any]:
        return await self._transport.call("SendTaskHeartbeat", {"taskToken": taskToken})
