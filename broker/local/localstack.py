"""LocalStack as a deployment target for the seed flows (``tests/localstack``, README).

LocalStack runs outside this process (``make localstack``: host mode, no Docker).  This
module only talks to it: ``localstack_health`` says whether it is up, ``LocalStackAws``
gives the ``AwsEndpoint`` the seed-flow helpers of ``local.moto`` deploy to, and
``deploy_activity_flow`` creates the activity seed's state machine, which moto cannot run
(it has no GetActivityTask).

``python -m broker.local.localstack deploy`` deploys every seed flow to LocalStack and prints
the settings for ``broker run`` as ``export`` lines; ``python -m broker.local.localstack start
FLOW INPUT`` runs one execution and prints how it ended (README, "Run against LocalStack").
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Final

from broker.local.moto import (
    _put_state_machine,
    deploy_seed_flows,
    start_executions,
    wait_for_executions,
)

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
_PREFIX: Final = "local"
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
    # Both calls are idempotent, so deploying again is safe.
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
    machine_arn = _put_state_machine(sfn, name, json.dumps(definition))
    return ActivityFlow(activity_arn=activity_arn, state_machine_arn=machine_arn)


def _deploy(aws: LocalStackAws) -> dict[str, str]:
    """Every seed flow, under fixed names; the settings that serve them."""
    flows = deploy_seed_flows(aws, prefix=_PREFIX)
    deploy_activity_flow(aws, name=f"{_PREFIX}-activity", heartbeat_s=60)
    # By name: the broker resolves them, as it would on AWS.
    names = {flow: url.rsplit("/", 1)[-1] for flow, url in flows.queues.items()}
    queues = [
        {"name": names["callback"], "default_handler": "callback"},
        {"name": names["verification"], "default_handler": "verify"},
        {"name": names["transactions"]},
    ]
    activities = [{"name": f"{_PREFIX}-activity", "handler": "verify"}]
    return {
        **aws.env(),
        "BROKER_HANDLERS": json.dumps(["handlers.seeds:router"]),
        "BROKER_QUEUES": json.dumps(queues),
        "BROKER_ACTIVITIES": json.dumps(activities),
    }


def _start(aws: LocalStackAws, flow: str, execution_input: Any, timeout_s: float) -> int:
    machine = f"arn:aws:states:{aws.region}:000000000000:stateMachine:{_PREFIX}-{flow}"
    (arn,) = start_executions(aws, machine, [execution_input], name_prefix=flow)
    result = wait_for_executions(aws, [arn], timeout_s=timeout_s)[arn]
    outcome = {"status": result.status, "output": result.output}
    if result.error is not None:
        outcome |= {"error": result.error, "cause": result.cause}
    print(json.dumps(outcome))
    return 0 if result.status in ("SUCCEEDED", "FAILED") else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m broker.local.localstack")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("deploy", help="deploy the seed flows; print the settings to export")
    start = commands.add_parser("start", help="run one execution of a seed flow and wait")
    start.add_argument("flow", choices=["callback", "verification", "transactions", "activity"])
    start.add_argument("input", help="the execution input, JSON")
    start.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    endpoint = localstack_endpoint()
    problem = localstack_health(endpoint)
    if problem is not None:
        print(f"{problem}; start it with `make localstack`", file=sys.stderr)
        return 1
    aws = LocalStackAws(endpoint)
    if args.command == "deploy":
        for name, value in _deploy(aws).items():
            print(f"export {name}={shlex.quote(value)}")
        return 0
    return _start(aws, args.flow, json.loads(args.input), args.timeout)


if __name__ == "__main__":
    sys.exit(main())
