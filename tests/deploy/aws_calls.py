"""Every AWS call a broker process makes, as IAM sees it: a recording proxy in front of moto.

The broker talks to AWS through its lean client (SQS, Step Functions) and botocore (SNS,
DynamoDB, and everything with ``BROKER_AWS_CLIENT=botocore``).  Both send one HTTP
request per call to the endpoint they are given, so recording at that endpoint sees
every call of either, in this process or a ``broker`` subprocess, without a hook in
either client.  Each request becomes ``(action, resource)``: the IAM action that
authorizes it (``sqs:DeleteMessageBatch`` is authorized as ``sqs:DeleteMessage``) and
the ARN it acts on, with the region and account written ``REGION`` and ``ACCOUNT`` as in
deploy/iam/broker-policy.json.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

#: X-Amz-Target prefixes (JSON protocols) → IAM service prefix.
_TARGETS: Final = {"AmazonSQS": "sqs", "AWSStepFunctions": "states"}
#: SigV4 credential-scope service names → IAM service prefix.
_SCOPES: Final = {"sqs": "sqs", "states": "states", "sns": "sns", "dynamodb": "dynamodb"}
_REGION: Final = "us-east-1"
_ACCOUNT: Final = "123456789012"  # moto's default account
_SCOPE = re.compile(r"Credential=[^/]+/\d+/[^/]+/([a-z0-9-]+)/aws4_request")


@dataclass(frozen=True, order=True)
class Call:
    action: str
    resource: str

    def __str__(self) -> str:
        return f"{self.action} on {self.resource}"


def _arn(service: str, name: str) -> str:
    if service == "sqs":
        return f"arn:aws:sqs:REGION:ACCOUNT:{name}"
    if service == "dynamodb":
        return f"arn:aws:dynamodb:REGION:ACCOUNT:table/{name}"
    return f"arn:aws:{service}:REGION:ACCOUNT:{name}"


def _normalized(arn: str) -> str:
    return arn.replace(f":{_REGION}:", ":REGION:").replace(f":{_ACCOUNT}:", ":ACCOUNT:")


def as_call(headers: Any, body: bytes) -> Call:
    """The IAM action and resource of one request to the AWS endpoint."""
    target = headers.get("X-Amz-Target", "")
    params: dict[str, Any]
    if target:
        prefix, _, operation = target.partition(".")
        service = _TARGETS.get(prefix) or ("dynamodb" if prefix.startswith("DynamoDB") else "")
        params = json.loads(body or b"{}")
    else:  # the query protocol (SNS): Action=... in a form body
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        operation = form.pop("Action", "")
        scope = _SCOPE.search(headers.get("Authorization", ""))
        service = _SCOPES.get(scope.group(1), "") if scope else ""
        params = form
    assert service, f"not an AWS call: {target!r} {body[:200]!r}"
    assert operation, f"not an AWS call: {target!r} {body[:200]!r}"
    if service == "sqs":
        operation = operation.removesuffix("Batch")  # authorized as the single action
        if "QueueUrl" in params:
            resource = _arn("sqs", urlsplit(params["QueueUrl"]).path.rsplit("/", 1)[-1])
        elif "QueueName" in params:
            resource = _arn("sqs", params["QueueName"])
        else:
            resource = "*"
    elif service == "states":
        if "activityArn" in params:
            resource = _normalized(params["activityArn"])
        elif operation == "CreateActivity":
            resource = _arn("states", f"activity:{params['name']}")
        else:
            resource = "*"  # SendTask*, ListActivities: no resource-level permissions
    elif service == "sns":
        resource = _normalized(params["TopicArn"]) if "TopicArn" in params else "*"
    else:
        resource = _arn("dynamodb", params["TableName"])
    return Call(f"{service}:{operation}", resource)


class _Proxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str, calls: list[Call]) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        self.upstream = urlsplit(upstream)
        self.calls = calls
        self.lock = threading.Lock()


class _Forward(BaseHTTPRequestHandler):
    server: _Proxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: a test's output is the broker's, not the proxy's

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        call = as_call(self.headers, body)
        with self.server.lock:
            self.server.calls.append(call)
        upstream = self.server.upstream
        # ReceiveMessage and GetActivityTask hold the connection while they long-poll.
        connection = http.client.HTTPConnection(str(upstream.hostname), upstream.port, timeout=90)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
            connection.request("POST", self.path, body=body, headers=headers)
            answer = connection.getresponse()
            payload = answer.read()
        finally:
            connection.close()
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in {"content-length", "connection", "transfer-encoding"}:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        # A long poll the broker cut at its stop has no reader: recorded all the same.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(payload)


@contextmanager
def recording(upstream: str) -> Iterator[tuple[str, list[Call]]]:
    """An endpoint URL that forwards to ``upstream`` (moto), and the calls made through it."""
    calls: list[Call] = []
    proxy = _Proxy(upstream, calls)
    thread = threading.Thread(target=proxy.serve_forever, name="aws-recorder", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{proxy.server_address[1]}", calls
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join(timeout=10)
