"""The lean transport: the hot calls as signed JSON POSTs, on what botocore resolved.

Every task costs a completion, a tenth of a receive and a tenth of a batch delete; through
botocore's per-request pipeline (User-Agent string, request objects, stdlib email
headers, hooks, validation) those calls were most of the broker's CPU per task
(docs/benchmarks.md).  These calls have a fixed shape, so ``LeanTransport`` sends them
itself: ``orjson`` bodies, ``broker.aws.sigv4`` signatures, aiohttp.

What it takes from the botocore client, once, at start-up (``LeanTransport.of``):

- the endpoint URL and region botocore resolved (``AWS_ENDPOINT_URL_SQS``, FIPS and
  dual-stack included) and the service's signing name, target prefix and protocol;
- the client's own aiohttp session (aiobotocore's ``AIOHTTPSession``): its TLS context
  (``AWS_CA_BUNDLE``, the config file's ``ca_bundle``, client certificates), its
  connection pool, its connect and read timeouts, and the proxy botocore chose for the
  endpoint (``HTTP(S)_PROXY`` / ``NO_PROXY`` or ``Config(proxies=…)``, with the config
  file's ``proxy_ca_bundle`` / ``proxy_client_cert``);
- the retry budget (``total_max_attempts``), used as botocore's standard mode does;
- the credential chain: refreshable credentials are asked for fresh values per call.

Errors are parsed by botocore's own response parser and raised as the client's own
``ClientError`` classes (``__type``, ``x-amzn-query-error``, HTML 5xx pages alike);
aiohttp's exceptions become the botocore ones aiobotocore would raise.  So ``classify``
and every log line read them exactly as before.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import aiohttp
import anyio
import orjson
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    ProxyConnectionError,
    ReadTimeoutError,
    SSLError,
)
from botocore.parsers import create_parser
from yarl import URL

from broker.aws.errors import ErrorKind, classify
from broker.aws.sigv4 import Credentials, SigV4, host_header
from broker.core.errors import ConfigError

__all__ = ["CredentialSource", "LeanTransport"]

CredentialSource = Callable[[], Awaitable[Credentials]]

#: botocore's standard retry mode: rand(0, 1) * min(2 ** (attempt - 1), 20) seconds.
_MAX_BACKOFF_S: Final = 20.0


class _AmzDate:
    """``20261123T120000Z`` for now, formatted once per second."""

    __slots__ = ("_second", "_text")

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._text = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(second))
            self._second = second
        return self._text


class LeanTransport:
    """Signed JSON POSTs of one service to the endpoint its botocore client resolved."""

    def __init__(
        self,
        *,
        http: aiohttp.ClientSession,
        endpoint_url: str,
        signer: SigV4,
        target_prefix: str,
        credentials: CredentialSource,
        client: Any,
        max_attempts: int = 1,
        proxy: str | None = None,
        proxy_headers: Mapping[str, str] | None = None,
        user_agent: str = "",
    ) -> None:
        self._http = http
        self.endpoint_url = endpoint_url
        self._url = URL(endpoint_url.rstrip("/") + "/", encoded=True)
        self._host = host_header(endpoint_url)
        self._signer = signer
        self._prefix = target_prefix
        self._credentials = credentials
        self._client = client
        self._parser = create_parser(client.meta.service_model.protocol)
        self.max_attempts = max(1, max_attempts)
        self._proxy = proxy
        self._proxy_headers = dict(proxy_headers or {})
        # aiobotocore's sessions do not decompress (auto_decompress=False): ask for none.
        self._fixed = {"Accept-Encoding": "identity", "User-Agent": user_agent}
        self._date = _AmzDate()

    @classmethod
    async def of(
        cls, client: Any, credentials: CredentialSource, *, user_agent: str
    ) -> LeanTransport:
        """A transport on everything ``client`` (an aiobotocore client) resolved."""
        meta = client.meta
        model = meta.service_model
        try:
            http_session = client._endpoint.http_session
            proxy_config = http_session._proxy_config
            proxy = proxy_config.proxy_url_for(meta.endpoint_url)
            http = await http_session._get_session(proxy)
        except AttributeError as exc:  # an aiobotocore that no longer looks like this
            raise ConfigError(
                f"the lean {model.service_name} client cannot read aiobotocore's HTTP session "
                f"({exc}); BROKER_AWS_CLIENT=botocore runs on the plain clients"
            ) from exc
        extra = {"x-amzn-query-mode": "true"} if model.is_query_compatible else {}
        retries = meta.config.retries or {}
        return cls(
            http=http,
            endpoint_url=meta.endpoint_url,
            signer=SigV4(
                meta.region_name,
                model.signing_name,
                content_type=f"application/x-amz-json-{model.metadata.get('jsonVersion', '1.0')}",
                extra_headers=extra,
            ),
            target_prefix=model.metadata["targetPrefix"],
            credentials=credentials,
            client=client,
            max_attempts=int(retries.get("total_max_attempts", 1)),
            proxy=proxy,
            proxy_headers=proxy_config.proxy_headers_for(proxy) if proxy else None,
            user_agent=user_agent,
        )

    async def call(self, operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """One call, retried as botocore's standard mode retries it."""
        body = orjson.dumps(params)
        target = f"{self._prefix}.{operation}"
        attempt = 1
        while True:
            try:
                return await self._send(operation, target, body, attempt)
            except (ClientError, BotoCoreError) as exc:
                if attempt >= self.max_attempts or classify(exc) is not ErrorKind.TRANSIENT:
                    raise
            await anyio.sleep(random.random() * min(2.0 ** (attempt - 1), _MAX_BACKOFF_S))
            attempt += 1

    async def _send(self, operation: str, target: str, body: bytes, attempt: int) -> dict[str, Any]:
        credentials = await self._credentials()
        headers = self._signer.headers(credentials, self._host, target, body, self._date.now())
        headers.update(self._fixed)
        raw_headers: dict[str, str] = {}
        try:
            async with self._http.post(
                self._url,
                data=body,
                headers=headers,
                proxy=self._proxy,
                proxy_headers=self._proxy_headers,
            ) as response:
                payload = await response.read()
                status = response.status
                if status >= 300:
                    raw_headers = {
                        k.decode("latin-1").lower(): v.decode("latin-1")
                        for k, v in response.raw_headers
                    }
        except aiohttp.ClientError as exc:
            raise _as_botocore(exc, self.endpoint_url, self._proxy) from exc
        except TimeoutError as exc:
            raise ReadTimeoutError(endpoint_url=self.endpoint_url, error=exc) from exc
        if status < 300:
            parsed: dict[str, Any] = orjson.loads(payload) if payload.strip() else {}
            return parsed
        raise self.client_error(operation, status, raw_headers, payload, attempt - 1)

    def client_error(
        self,
        operation: str,
        status: int,
        headers: Mapping[str, str],
        payload: bytes,
        retries: int = 0,
    ) -> ClientError:
        """The error botocore would raise for this answer (its parser, its classes)."""
        shape = self._client.meta.service_model.operation_model(operation).output_shape
        parsed = self._parser.parse(
            {"status_code": status, "headers": dict(headers), "body": payload}, shape
        )
        parsed.setdefault("ResponseMetadata", {})["RetryAttempts"] = retries
        error = parsed.get("Error", {})
        # SQS's modeled errors are found by their shape name (botocore's
        # _handle_sqs_compatible_error); other services carry no QueryErrorCode.
        code = error.get("QueryErrorCode") or error.get("Code")
        error_class: type[ClientError] = self._client.exceptions.from_code(code)
        return error_class(parsed, operation)


def _as_botocore(exc: aiohttp.ClientError, endpoint_url: str, proxy: str | None) -> Exception:
    """The botocore exception aiobotocore raises for this aiohttp one (its ``send``)."""
    if isinstance(exc, aiohttp.ClientSSLError):
        return SSLError(endpoint_url=endpoint_url, error=exc)
    if isinstance(exc, aiohttp.ClientProxyConnectionError | aiohttp.ClientHttpProxyError):
        return ProxyConnectionError(proxy_url=_masked(proxy), error=exc)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return ConnectionClosedError(endpoint_url=endpoint_url, error=exc, request=None)
    if isinstance(exc, aiohttp.ServerTimeoutError):
        if str(exc).lower().startswith("connect"):
            return ConnectTimeoutError(endpoint_url=endpoint_url, error=exc)
        return ReadTimeoutError(endpoint_url=endpoint_url, error=exc)
    if isinstance(exc, aiohttp.ClientConnectionError | socket.gaierror):
        return EndpointConnectionError(endpoint_url=endpoint_url, error=exc)
    return HTTPClientError(error=exc)


def _masked(proxy: str | None) -> str:
    from botocore.httpsession import mask_proxy_url

    return mask_proxy_url(proxy) if proxy else ""
