"""The lean completion client: signatures AWS accepts, errors read like botocore's."""

from __future__ import annotations

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials
from botocore.exceptions import ClientError

from broker.aws.errors import ErrorKind, classify
from broker.aws.fastsfn import SigV4, _client_error

BODY = b'{"taskToken":"t","output":"{\\"ok\\":true}"}'
TARGET = "AWSStepFunctions.SendTaskSuccess"


@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzEXAMPLESESSIONTOKEN"])
def test_signature_equals_botocores(token: str | None) -> None:
    request = AWSRequest(
        method="POST",
        url="https://states.eu-west-1.amazonaws.com/",
        data=BODY,
        headers={"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": TARGET},
    )
    SigV4Auth(Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI", token), "states", "eu-west-1").add_auth(
        request
    )
    ours = SigV4("eu-west-1", "states").headers(
        # botocore's NamedTuple has read-only fields; SigV4's protocol declares them settable.
        ReadOnlyCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI", token),  # type: ignore[arg-type]
        "states.eu-west-1.amazonaws.com",
        TARGET,
        BODY,
        request.headers["X-Amz-Date"],  # botocore stamps the current time: reuse its stamp
    )
    assert ours["Authorization"] == request.headers["Authorization"]
    assert ours.get("X-Amz-Security-Token") == request.headers.get("X-Amz-Security-Token")


def test_signing_key_follows_a_rotated_secret() -> None:
    signer = SigV4("us-east-1", "states")
    date = "20261123T120000Z"
    first = signer.headers(ReadOnlyCredentials("A", "s1", None), "h", TARGET, BODY, date)  # type: ignore[arg-type]
    second = signer.headers(ReadOnlyCredentials("A", "s2", None), "h", TARGET, BODY, date)  # type: ignore[arg-type]
    assert first["Authorization"] != second["Authorization"]


@pytest.mark.parametrize(
    ("status", "payload", "code", "kind"),
    [
        (400, b'{"__type":"com.amazonaws.swf.service.v2.model#TaskTimedOut"}', "TaskTimedOut",
         ErrorKind.TASK_CLOSED),
        (400, b'{"__type":"InvalidToken","message":"bad"}', "InvalidToken",
         ErrorKind.TASK_CLOSED),
        (400, b'{"__type":"ThrottlingException"}', "ThrottlingException", ErrorKind.TRANSIENT),
        (400, b'{"__type":"InvalidOutput"}', "InvalidOutput", ErrorKind.INVALID_OUTPUT),
        (403, b'{"__type":"AccessDeniedException"}', "AccessDeniedException",
         ErrorKind.PERMANENT),
        (502, b"<html>bad gateway</html>", "HTTP502", ErrorKind.TRANSIENT),
    ],
)  # fmt: skip
def test_errors_are_classified_like_botocores(
    status: int, payload: bytes, code: str, kind: ErrorKind
) -> None:
    error = _client_error("SendTaskSuccess", status, payload)
    assert isinstance(error, ClientError)
    assert error.response["Error"]["Code"] == code
    assert classify(error) is kind
