"""The lean clients: signatures botocore would make, errors botocore would raise, checked
messages, and botocore's TLS, proxy and timeout settings honoured (loopback servers)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aioboto3
import pytest
from aiobotocore.config import AioConfig
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials
from botocore.exceptions import ClientError, ReadTimeoutError, SSLError

from broker.aws.clients import lean_clients, open_clients
from broker.aws.errors import ErrorKind, classify, is_not_found
from broker.aws.leansqs import attributes_md5
from broker.aws.sigv4 import SigV4, host_header
from broker.core.settings import BrokerSettings, QueueSettings
from broker.local.env import AWS_OVERRIDES
from tests.loopback import CannedAws, canned_aws, forwarding_proxy, make_ca

BODY = b'{"taskToken":"t","output":"{\\"ok\\":true}"}'


@pytest.fixture(autouse=True)
def _aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (*AWS_OVERRIDES, "AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    for name in ("http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))


# -- signing ------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzEXAMPLESESSIONTOKEN"])
@pytest.mark.parametrize(
    ("service", "host", "target", "extra"),
    [
        ("states", "states.eu-west-1.amazonaws.com", "AWSStepFunctions.SendTaskSuccess", {}),
        (
            "sqs",
            "sqs.eu-west-1.amazonaws.com",
            "AmazonSQS.ReceiveMessage",
            {"x-amzn-query-mode": "true"},
        ),
        ("sqs", "127.0.0.1:4566", "AmazonSQS.DeleteMessageBatch", {"x-amzn-query-mode": "true"}),
    ],
)
def test_signature_equals_botocores(
    token: str | None, service: str, host: str, target: str, extra: dict[str, str]
) -> None:
    signer = SigV4("eu-west-1", service, extra_headers=extra)
    request = AWSRequest(
        method="POST",
        url=f"https://{host}/",
        data=BODY,
        headers={"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": target, **extra},
    )
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI", token)
    SigV4Auth(credentials, service, "eu-west-1").add_auth(request)
    ours = signer.headers(
        ReadOnlyCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI", token),
        host,
        target,
        BODY,
        request.headers["X-Amz-Date"],  # botocore stamps the current time: reuse its stamp
    )
    assert ours["Authorization"] == request.headers["Authorization"]
    assert ours.get("X-Amz-Security-Token") == request.headers.get("X-Amz-Security-Token")


def test_signing_key_follows_a_rotated_secret() -> None:
    signer = SigV4("us-east-1", "states")
    date = "20261123T120000Z"
    target = "AWSStepFunctions.SendTaskSuccess"
    first = signer.headers(ReadOnlyCredentials("A", "s1", None), "h", target, BODY, date)
    second = signer.headers(ReadOnlyCredentials("A", "s2", None), "h", target, BODY, date)
    assert first["Authorization"] != second["Authorization"]


# -- errors -------------------------------------------------------------------------


@asynccontextmanager
async def both_clients(
    endpoint: str, config: AioConfig | None = None
) -> AsyncIterator[tuple[Any, Any, Any, Any]]:
    """(plain sqs, plain sfn, lean sqs, lean sfn) on one endpoint."""
    session = aioboto3.Session()
    config = config or AioConfig(retries={"mode": "standard", "total_max_attempts": 1})
    async with AsyncExitStack() as stack:
        sqs = await stack.enter_async_context(
            session.client("sqs", endpoint_url=endpoint, config=config)
        )
        sfn = await stack.enter_async_context(
            session.client("stepfunctions", endpoint_url=endpoint, config=config)
        )
        lean = await lean_clients(session, sqs, sfn)
        yield sqs, sfn, lean.sqs, lean.sfn


_QUERY_ERROR = {"x-amzn-query-error": "AWS.SimpleQueueService.NonExistentQueue;Sender"}
ERROR_SHAPES = [
    # (service, status, body, headers, code, kind)
    ("sqs", 400, b'{"__type":"com.amazonaws.sqs#QueueDoesNotExist","message":"gone"}',
     _QUERY_ERROR, "AWS.SimpleQueueService.NonExistentQueue", ErrorKind.PERMANENT),
    ("sqs", 400, b'{"__type":"com.amazonaws.sqs#RequestThrottled","message":"slow"}',
     {"x-amzn-query-error": "RequestThrottled;Sender"}, "RequestThrottled", ErrorKind.TRANSIENT),
    ("sqs", 400, b'{"__type":"com.amazonaws.sqs#InvalidAddress","Message":"no"}', {},
     "InvalidAddress", ErrorKind.PERMANENT),
    ("sqs", 500, b'{"__type":"InternalFailure"}', {"x-amzn-query-error": ";Receiver"},
     "InternalFailure", ErrorKind.TRANSIENT),
    ("sqs", 502, b"<html><body>Bad Gateway</body></html>", {"Content-Type": "text/html"},
     "502", ErrorKind.TRANSIENT),
    ("sfn", 400, b'{"__type":"com.amazonaws.swf.service.v2.model#TaskTimedOut","message":"t"}',
     {}, "TaskTimedOut", ErrorKind.TASK_CLOSED),
    ("sfn", 400, b'{"__type":"InvalidToken:http://internal.amazon.com/","message":"bad"}', {},
     "InvalidToken", ErrorKind.TASK_CLOSED),
    ("sfn", 400, b'{"__type":"ThrottlingException"}', {}, "ThrottlingException",
     ErrorKind.TRANSIENT),
    ("sfn", 400, b'{"__type":"InvalidOutput"}', {}, "InvalidOutput", ErrorKind.INVALID_OUTPUT),
    ("sfn", 403, b'{"__type":"AccessDeniedException"}', {}, "AccessDeniedException",
     ErrorKind.PERMANENT),
    ("sfn", 400, b"not json at all", {}, "400", ErrorKind.PERMANENT),
]  # fmt: skip


@pytest.mark.parametrize(("service", "status", "body", "headers", "code", "kind"), ERROR_SHAPES)
async def test_errors_are_the_ones_botocore_raises(
    service: str, status: int, body: bytes, headers: dict[str, str], code: str, kind: ErrorKind
) -> None:
    async with canned_aws() as aws, both_clients(aws.url) as (sqs, sfn, lean_sqs, lean_sfn):
        operation = "ReceiveMessage" if service == "sqs" else "SendTaskSuccess"
        aws.answers[operation] = aws.answers.get(operation) or _answer(status, body, headers)

        async def call(client: Any) -> None:
            if service == "sqs":
                await client.receive_message(QueueUrl=f"{aws.url}/1/q", WaitTimeSeconds=0)
            else:
                await client.send_task_success(taskToken="t", output="{}")

        errors = []
        for client in (sqs, lean_sqs) if service == "sqs" else (sfn, lean_sfn):
            with pytest.raises(ClientError) as caught:
                await call(client)
            errors.append(caught.value)
    plain, lean = errors
    assert type(lean) is type(plain)
    assert lean.response["Error"] == plain.response["Error"]
    assert lean.response["Error"]["Code"] == code
    assert lean.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert classify(lean) is kind


def _answer(status: int, body: bytes, headers: dict[str, str]) -> Any:
    from tests.loopback import Answer

    return Answer(status=status, body=body, headers=headers)


async def test_a_missing_queue_reads_as_not_found() -> None:
    async with canned_aws() as aws, both_clients(aws.url) as (_, _, lean_sqs, _):
        aws.answers["DeleteMessageBatch"] = _answer(400, ERROR_SHAPES[0][2], _QUERY_ERROR)
        with pytest.raises(ClientError) as caught:
            await lean_sqs.delete_message_batch(QueueUrl="q", Entries=[])
    assert is_not_found(caught.value)
    assert type(caught.value).__name__ == "QueueDoesNotExist"


async def test_a_transient_error_is_retried_within_the_clients_attempts() -> None:
    config = AioConfig(retries={"mode": "standard", "total_max_attempts": 3})
    async with canned_aws() as aws, both_clients(aws.url, config) as (_, _, lean_sqs, _):
        aws.answers["ChangeMessageVisibility"] = _answer(500, b'{"__type":"InternalError"}', {})
        with pytest.raises(ClientError):
            await lean_sqs.change_message_visibility(
                QueueUrl="q", ReceiptHandle="r", VisibilityTimeout=0
            )
        assert len(aws.requests) == 3


# -- received messages ----------------------------------------------------------------


def _message(n: int, body: str, attributes: dict[str, Any] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {
        "MessageId": f"m{n}",
        "ReceiptHandle": f"r{n}",
        "Body": body,
        "MD5OfBody": hashlib.md5(body.encode()).hexdigest(),
    }
    if attributes is not None:
        message["MessageAttributes"] = attributes
    return message


async def test_a_damaged_message_is_left_out_of_the_receive() -> None:
    blob = {"DataType": "Binary", "BinaryValue": base64.b64encode(b"\x00\x01").decode()}
    attributes: dict[str, dict[str, Any]] = {
        "type": {"DataType": "String", "StringValue": "x"},
        "blob": blob,
    }
    decoded: dict[str, dict[str, Any]] = {
        "type": attributes["type"],
        "blob": {"DataType": "Binary", "BinaryValue": b"\0\1"},
    }
    good = {**_message(1, "ok ✓", attributes), "MD5OfMessageAttributes": attributes_md5(decoded)}
    bad_body = {**_message(2, "original"), "Body": "corrupted"}
    bad_attributes = {**_message(3, "b", attributes), "MD5OfMessageAttributes": "0" * 32}
    unchecked = _message(4, "no attribute checksum sent", {"n": {"DataType": "Number"}})
    async with canned_aws() as aws, both_clients(aws.url) as (_, _, lean_sqs, _):
        aws.answer("ReceiveMessage", {"Messages": [good, bad_body, bad_attributes, unchecked]})
        response = await lean_sqs.receive_message(QueueUrl="q", MaxNumberOfMessages=10)
    assert [m["MessageId"] for m in response["Messages"]] == ["m1", "m4"]
    assert response["Messages"][0]["MessageAttributes"]["blob"]["BinaryValue"] == b"\0\1"
    assert lean_sqs.damaged == 2


def test_the_attribute_checksum_is_awss() -> None:
    # AWS's documented example encoding, computed independently of attributes_md5.
    def field(data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + data

    raw = field(b"a") + field(b"Number") + b"\x01" + field(b"1")
    raw += field(b"b") + field(b"Binary") + b"\x02" + field(b"\xff")
    expected = hashlib.md5(raw).hexdigest()
    attributes: dict[str, dict[str, Any]] = {
        "b": {"DataType": "Binary", "BinaryValue": b"\xff"},
        "a": {"DataType": "Number", "StringValue": "1"},
    }
    assert attributes_md5(attributes) == expected


# -- what botocore resolved: TLS, proxies, timeouts ----------------------------------------


def _settings(endpoint: str) -> BrokerSettings:
    return BrokerSettings(queues=(QueueSettings(name="q"),), aws_endpoint_url=endpoint)


async def _one_lean_call(endpoint: str) -> CannedAws | None:
    async with open_clients(_settings(endpoint)) as clients:
        await clients.sqs.delete_message_batch(QueueUrl="q", Entries=[])
        await clients.sfn.send_task_success(taskToken="t", output="{}")
    return None


@pytest.mark.parametrize("where", ["AWS_CA_BUNDLE", "config file ca_bundle"])
async def test_the_ca_bundle_botocore_uses_is_used(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca_path, server_tls = make_ca(tmp_path)
    async with canned_aws(tls=server_tls) as aws:
        with pytest.raises(SSLError):
            await _one_lean_call(aws.url)
        assert aws.requests == []
        if where == "AWS_CA_BUNDLE":
            monkeypatch.setenv("AWS_CA_BUNDLE", str(ca_path))
        else:
            config = tmp_path / "config"
            config.write_text(f"[default]\nca_bundle = {ca_path}\n")
            monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
        await _one_lean_call(aws.url)
    targets = [request["X-Amz-Target"] for request in aws.requests]
    assert targets == ["AmazonSQS.DeleteMessageBatch", "AWSStepFunctions.SendTaskSuccess"]


async def test_the_proxy_from_the_environment_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    async with canned_aws() as aws, forwarding_proxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        await _one_lean_call(aws.url)
        assert len(aws.requests) == 2
        assert proxy.seen
        assert all(line.startswith(f"POST {aws.url}/") for line in proxy.seen)
        # NO_PROXY names the endpoint: botocore goes direct, so does the lean path.
        proxy.seen.clear()
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        await _one_lean_call(aws.url)
        assert len(aws.requests) == 4
        assert proxy.seen == []


async def test_the_clients_read_timeout_is_used() -> None:
    from tests.loopback import Answer

    config = AioConfig(read_timeout=0.3, retries={"mode": "standard", "total_max_attempts": 1})
    async with canned_aws() as aws, both_clients(aws.url, config) as (_, _, _, lean_sfn):
        aws.answers["SendTaskSuccess"] = Answer(delay_s=1.0)
        with pytest.raises(ReadTimeoutError):
            await lean_sfn.send_task_success(taskToken="t", output="{}")
        aws.answers["SendTaskSuccess"] = Answer(delay_s=0.05)
        assert await lean_sfn.send_task_success(taskToken="t", output="{}") == {}


@pytest.mark.parametrize(
    "url",
    [
        "https://sqs.eu-west-1.amazonaws.com",
        "https://SQS.eu-west-1.amazonaws.com:443/",
        "http://127.0.0.1:4566",
        "http://localhost:80",
        "https://[::1]:8443/",
    ],
)
def test_the_signed_host_is_botocores(url: str) -> None:
    from botocore import auth

    assert host_header(url) == auth._host_from_url(url)  # type: ignore[attr-defined]
