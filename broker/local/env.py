"""The environment for a local AWS endpoint (moto, LocalStack, the loopback stub).

``AWS_OVERRIDES`` is the one list of variables to clear before an SDK client is pointed
at a local endpoint: the demo, the integration and LocalStack suites (``tests/``) and the
stub's tests all use it. ``endpoint_env`` gives the variables that then point a default
client (boto3, aioboto3, the broker) at that endpoint.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Final

__all__ = ["AWS_OVERRIDES", "endpoint_env", "loopback_without_proxy", "patched_environ"]

#: Variables of the user's own AWS setup that would send an SDK somewhere other than the
#: endpoint it is given (the service-specific endpoint variables win over
#: ``AWS_ENDPOINT_URL``; ``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS`` ignores it), make it look
#: for a profile that does not exist here (moto reads the profile on import), or add a
#: session token to the dummy credentials. ``AWS_ENDPOINT_URL`` itself is cleared too: a
#: caller that wants one sets it from ``endpoint_env``.
AWS_OVERRIDES: Final = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    # One per service the broker calls (SQS, Step Functions, SNS for task.notify(),
    # DynamoDB for idempotent=True): any of them left set would send that one service
    # to the user's own endpoint.
    "AWS_ENDPOINT_URL_SQS",
    "AWS_ENDPOINT_URL_SFN",
    "AWS_ENDPOINT_URL_SNS",
    "AWS_ENDPOINT_URL_DYNAMODB",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
)


def endpoint_env(endpoint_url: str, *, region: str, credentials: str) -> dict[str, str]:
    """What points a default client at ``endpoint_url``, with dummy credentials."""
    return {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "AWS_ACCESS_KEY_ID": credentials,
        "AWS_SECRET_ACCESS_KEY": credentials,
    }


def loopback_without_proxy() -> dict[str, str]:
    """``NO_PROXY`` / ``no_proxy`` extended by loopback: a proxy from the environment must
    never see emulator traffic."""
    loopback = "127.0.0.1,localhost"
    values = {}
    for name in ("NO_PROXY", "no_proxy"):
        current = os.environ.get(name)
        if current and loopback in current:
            values[name] = current  # already there: an `eval` run twice adds nothing
        else:
            values[name] = f"{current},{loopback}" if current else loopback
    return values


@contextlib.contextmanager
def patched_environ(values: Mapping[str, str], remove: Sequence[str] = ()) -> Iterator[None]:
    """``os.environ`` with ``remove`` cleared and ``values`` set; restored on the way out."""
    saved = {name: os.environ.get(name) for name in (*values, *remove)}
    for name in remove:
        os.environ.pop(name, None)
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
