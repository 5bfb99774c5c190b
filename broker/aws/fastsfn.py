"""A lean Step Functions client for the three completion calls (``fast_completions``).

Every task costs one SendTaskSuccess or SendTaskFailure, and through botocore that call
is most of the broker's CPU per task (docs/benchmarks.md: about 0.9 ms of a 1.6 ms task,
a quarter of it building the User-Agent string).  The three calls are fixed-shape JSON
requests, so this client signs them with SigV4 itself (the signing key derived once per
day, as AWS allows) and sends them over aiohttp, which aiobotocore already brings.

What it keeps from botocore: the endpoint and region the regular client resolved, and
the credential chain (refreshable credentials are asked for fresh values per call).
Errors come back as botocore ``ClientError`` with the service's error code and HTTP
status, so ``classify`` reads them exactly as it reads botocore's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, Protocol

import aiohttp
import orjson
from botocore.exceptions import ClientError

__all__ = ["FastSfn", "SigV4"]

_ALGORITHM: Final = "AWS4-HMAC-SHA256"
_CONTENT_TYPE: Final = "application/x-amz-json-1.0"


class _Credentials(Protocol):
    access_key: str
    secret_key: str
    token: str | None


CredentialSource = Callable[[], Awaitable[_Credentials]]


class SigV4:
    """SigV4 headers for POST / with a JSON body, one service and region."""

    def __init__(self, region: str, service: str) -> None:
        self.region = region
        self.service = service
        self._key_for: tuple[str, str] = ("", "")
        self._key = b""

    def _signing_key(self, secret_key: str, day: str) -> bytes:
        if self._key_for != (secret_key, day):
            key = f"AWS4{secret_key}".encode()
            for part in (day, self.region, self.service, "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._key_for, self._key = (secret_key, day), key
        return self._key

    def headers(
        self, credentials: _Credentials, host: str, target: str, body: bytes, amz_date: str
    ) -> dict[str, str]:
        day = amz_date[:8]
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        # Canonical headers, lower-case names in sorted order.
        signed = [
            ("content-type", _CONTENT_TYPE),
            ("host", host),
            ("x-amz-date", amz_date),
        ]
        if credentials.token:
            signed.append(("x-amz-security-token", credentials.token))
        signed.append(("x-amz-target", target))
        names = ";".join(name for name, _ in signed)
        canonical = "\n".join(
            [
                "POST",
                "/",
                "",
                "".join(f"{name}:{value}\n" for name, value in signed),
                names,
                hashlib.sha256(body).hexdigest(),
            ]
        )
        to_sign = "\n".join(
            [_ALGORITHM, amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
        )
        signature = hmac.new(
            self._signing_key(credentials.secret_key, day), to_sign.encode(), hashlib.sha256
        ).hexdigest()
        headers = {
            "Content-Type": _CONTENT_TYPE,
            "X-Amz-Date": amz_date,
            "X-Amz-Target": target,
            "Authorization": (
                f"{_ALGORITHM} Credential={credentials.access_key}/{scope}, "
                f"SignedHeaders={names}, Signature={signature}"
            ),
        }
        if credentials.token:
            headers["X-Amz-Security-Token"] = credentials.token
        return headers


class FastSfn:
    """SendTaskSuccess / SendTaskFailure / SendTaskHeartbeat, satisfying ``SfnApi``.

    Any other call (the activity ones at start-up) goes to ``fallback``, the botocore
    client.
    """

    def __init__(
        self,
        http: aiohttp.ClientSession,
        endpoint_url: str,
        region: str,
        credentials: CredentialSource,
        fallback: object,
    ) -> None:
        self._fallback = fallback
        self._http = http
        self._url = endpoint_url.rstrip("/") + "/"
        self._host = urllib.parse.urlsplit(endpoint_url).netloc
        self._signer = SigV4(region, "states")
        self._credentials = credentials

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fallback, name)

    async def send_task_success(self, *, taskToken: str, output: str) -> Mapping[str, Any]:
        return await self._call("SendTaskSuccess", {"taskToken": taskToken, "output": output})

    async def send_task_failure(
        self, *, taskToken: str, error: str = "", cause: str = ""
    ) -> Mapping[str, Any]:
        params = {"taskToken": taskToken, "error": error, "cause": cause}
        return await self._call("SendTaskFailure", params)

    async def send_task_heartbeat(self, *, taskToken: str) -> Mapping[str, Any]:
        return await self._call("SendTaskHeartbeat", {"taskToken": taskToken})

    async def _call(self, operation: str, params: Mapping[str, Any]) -> Mapping[str, Any]:
        body = orjson.dumps(params)
        credentials = await self._credentials()
        amz_date = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        headers = self._signer.headers(
            credentials, self._host, f"AWSStepFunctions.{operation}", body, amz_date
        )
        async with self._http.post(self._url, data=body, headers=headers) as response:
            payload = await response.read()
            status = response.status
        if status < 300:
            result: Mapping[str, Any] = orjson.loads(payload) if payload.strip() else {}
            return result
        raise _client_error(operation, status, payload)


def _client_error(operation: str, status: int, payload: bytes) -> ClientError:
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError:
        document = {}
    if not isinstance(document, dict):
        document = {}
    # "com.amazonaws.swf.service.v2.model#TaskTimedOut" → "TaskTimedOut", as botocore does.
    code = str(document.get("__type") or f"HTTP{status}").rsplit("#", 1)[-1]
    message = str(document.get("message") or document.get("Message") or "")
    response: Any = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, operation)
