"""LocalStack as a deployment target for the seed flows (``tests/localstack``, README).

LocalStack runs outside this process (``make localstack``: host mode, no Docker).  This
module only talks to it: ``localstack_health`` says whether it is up, and
``LocalStackAws`` is the ``AwsEndpoint`` that ``local.flows`` deploys the seed flows to
(the activity flow included, which moto cannot run: it has no GetActivityTask).

``python -m broker.local.localstack deploy`` deploys every seed flow to LocalStack and prints
the settings for ``broker run`` as ``export`` lines (each seed queue with its dead-letter
queue, so the broker starts without a warning; the decision topic, a fresh decision key
and the decision listener on 127.0.0.1:8081 for seed 004's approvals, whose links arrive
in the queue ``local-decisions-inbox``); ``python -m broker.local.localstack start
FLOW INPUT`` runs one execution and prints how it ended; ``python -m broker.local.localstack
inbox`` prints the decision links waiting in the inbox queue, to open in a browser (README,
"Run against LocalStack").
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import urllib.error
import urllib.request
from typing import Any, Final

from broker.local.endpoint import AwsEndpoint, EndpointClients
from broker.local.env import endpoint_env
from broker.local.executions import start_executions, wait_for_executions
from broker.local.flows import (
    SEED_ROUTERS,
    deploy_activity_flow,
    deploy_seed_flows,
    seed_decision_settings,
    seed_queue_settings,
)

__all__ = [
    "DEFAULT_ENDPOINT",
    "LocalStackAws",
    "deploy_all",
    "localstack_endpoint",
    "localstack_health",
]

DEFAULT_ENDPOINT: Final = "http://127.0.0.1:4566"
_REQUIRED_SERVICES: Final = ("sqs", "stepfunctions", "sns")
#: The decision listener's default port (BROKER_DECISION_PORT).
_DECISION_PORT: Final = 8081
_CREDENTIALS: Final = "test"  # LocalStack accepts any credentials
_PREFIX: Final = "local"
# Loopback only: a proxy from the environment must never see emulator traffic.
_LOOPBACK_OPENER: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def localstack_endpoint() -> str:
    """``LOCALSTACK_ENDPOINT``, else LocalStack's default gateway on loopback."""
    return os.environ.get("LOCALSTACK_ENDPOINT") or DEFAULT_ENDPOINT


def localstack_health(endpoint: str, *, timeout_s: float = 2.0) -> str | None:
    """``None`` when LocalStack answers with SQS, Step Functions and SNS available, else
    why not."""
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
        self._clients = EndpointClients(_CREDENTIALS)

    @property
    def region(self) -> str:
        return self._region

    @property
    def endpoint_url(self) -> str:
        return self._endpoint_url

    def env(self) -> dict[str, str]:
        return endpoint_env(self._endpoint_url, region=self._region, credentials=_CREDENTIALS)

    def client(self, service: str) -> Any:
        return self._clients.create(service, region=self._region, endpoint_url=self._endpoint_url)


def deploy_all(aws: AwsEndpoint) -> dict[str, str]:
    """Every seed flow, under fixed names; the settings that serve them (``deploy``)."""
    flows = deploy_seed_flows(aws, prefix=_PREFIX, dead_letter_queues=True)
    deploy_activity_flow(aws, name=f"{_PREFIX}-activity", heartbeat_s=60)
    activities = [{"name": f"{_PREFIX}-activity", "handler": "verify"}]
    return {
        **aws.env(),
        "BROKER_HANDLERS": json.dumps(list(SEED_ROUTERS)),
        "BROKER_QUEUES": json.dumps(seed_queue_settings(flows)),
        "BROKER_ACTIVITIES": json.dumps(activities),
        **seed_decision_settings(flows, port=_DECISION_PORT),
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
    commands.add_parser("inbox", help="print (and take) the decision links in the inbox queue")
    args = parser.parse_args(argv)
    endpoint = localstack_endpoint()
    problem = localstack_health(endpoint)
    if problem is not None:
        print(f"{problem}; start it with `make localstack`", file=sys.stderr)
        return 1
    aws = LocalStackAws(endpoint)
    if args.command == "deploy":
        for name, value in deploy_all(aws).items():
            print(f"export {name}={shlex.quote(value)}")
        return 0
    if args.command == "inbox":
        return _inbox(aws)
    return _start(aws, args.flow, json.loads(args.input), args.timeout)


def _inbox(aws: LocalStackAws) -> int:
    """The approval notifications in ``local-decisions-inbox``, one JSON line each (taken
    off the queue: each is printed once)."""
    sqs = aws.client("sqs")
    url = sqs.get_queue_url(QueueName=f"{_PREFIX}-decisions-inbox")["QueueUrl"]
    received = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=2)
    for message in received.get("Messages", ()):
        print(message["Body"])
        sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
