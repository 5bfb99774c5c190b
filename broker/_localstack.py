"""LocalStack as a deployment target for the seed flows (``tests/localstack``, README).

LocalStack runs outside this process (``make localstack``: host mode, no Docker).  This
module only talks to it: ``localstack_health`` says whether it is up, ``LocalStackAws``
gives the ``AwsEndpoint`` the seed-flow helpers of ``_emulator`` deploy to, and
``deploy_activity_flow`` creates the activity seed's state machine, which moto cannot run
(it has no GetActivityTask).
"""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "DEFAULT_ENDPOINT",
    "ActivityFlow",
    "LocalStackAws",
    "deploy_activity_flow",
    "localstack_endpoint",
    "localstack_health",
]

DEFAULT_ENDPOINT: Final = "http://127.0.0.1:4566"
_REQUIRED_SERVICES: Final = ("sqs", "stepfunctions")
_CREDENTIALS: Final = "test"  # LocalStack accepts any credentials
# LocalStack does not check roles; CreateStateMachine still requires one.
_ROLE_ARN: Final = "arn:aws:iam::000000000000:role/sfn-callback-broker-local"
# Loopback only: a proxy from the environment must never see emulator traffic.
_LOOPBACK_OPENER: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def localstack_endpoint() -> str:
    """``LOCALSTACK_ENDPOINT``, else LocalStack's default gateway on loopback."""
    return os.environ.get("LOCALSTACK_ENDPOINT") or DEFAULT_ENDPOINT


def localstack_health(endpoint: str, *, timeout_s: float = 2.0) -> str | None:
    """``None`` when LocalStack answers with SQS and Step Functions available, else why not."""
    try:
        with _LOOPBACK_OPENER.open(f"{endpoint}/_localstack/health", timeout=timeout_s) as r:
            services = json.load(r).get("services", {})
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"no answer from {endpoint}/_localstack/health ({exc})"
    missing = [s for s in _REQUIRED_SERVICES if services.get(s) not in ("available", "running")]
    if missing:
        return f"LocalStack at {endpoint} does not offer {', '.join(missing)}"
    return None


class LocalStackAws:
    """An ``AwsEndpoint`` for a LocalStack that is already running."""

    def __init__(self, endpoint_url: str, *, region: str = "us-east-1") -> None:
        self._endpoint_url = endpoint_url
        self._region = region
        self._botocore_session: Any = None
        self._lock = threading.Lock()

    @property
    def region(self) -> str:
        return self._region

    @property
    def endpoint_url(self) -> str:
        return self._endpoint_url

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self._endpoint_url,
            "AWS_REGION": self._region,
            "AWS_DEFAULT_REGION": self._region,
            "AWS_ACCESS_KEY_ID": _CREDENTIALS,
            "AWS_SECRET_ACCESS_KEY": _CREDENTIALS,
        }

    def client(self, service: str) -> Any:
        # As EmbeddedAws.client: one botocore session (its models are cached on it), cut
        # loose from AWS_PROFILE; creating clients from one session is not thread-safe.
        with self._lock:
            if self._botocore_session is None:
                import botocore.session

                self._botocore_session = botocore.session.Session(
                    session_vars={"profile": (None, None, None, None)}
                )
            return self._botocore_session.create_client(
                service,
                region_name=self._region,
                endpoint_url=self._endpoint_url,
                aws_access_key_id=_CREDENTIALS,
                aws_secret_access_key=_CREDENTIALS,
            )


@dataclass(frozen=True)
class ActivityFlow:
    activity_arn: str
    state_machine_arn: str


def deploy_activity_flow(
    aws: LocalStackAws,
    *,
    name: str,
    heartbeat_s: int | None = None,
    timeout_s: int = 120,
) -> ActivityFlow:
    """The activity seed (003): one activity and a state machine with one Task on it.

    ``heartbeat_s`` sets the task's ``HeartbeatSeconds``: a worker silent for longer
    fails the execution with ``States.Timeout``.
    """
    sfn = aws.client("stepfunctions")
    activity_arn: str = sfn.create_activity(name=name)["activityArn"]
    task: dict[str, Any] = {
        "Type": "Task",
        "Resource": activity_arn,
        "TimeoutSeconds": timeout_s,
        "End": True,
    }
    if heartbeat_s is not None:
        task["HeartbeatSeconds"] = heartbeat_s
    definition = {"StartAt": "TestActivity", "States": {"TestActivity": task}}
    machine_arn: str = sfn.create_state_machine(
        name=name, definition=json.dumps(definition), roleArn=_ROLE_ARN
    )["stateMachineArn"]
    return ActivityFlow(activity_arn=activity_arn, state_machine_arn=machine_arn)
