"""LocalStack as a deployment target for the seed flows (``tests/localstack``, README).

LocalStack runs outside this process (``make localstack``: host mode, no Docker).  This
module only talks to it: ``localstack_health`` (from ``local.target``) says whether it is
up, and ``LocalStackAws`` is the ``AwsEndpoint`` that ``local.flows`` deploys the seed
flows to (the activity flow included, which moto cannot run: it has no GetActivityTask).

``python -m broker.local.localstack deploy|start|inbox`` is kept as an alias of ``broker
local`` on LocalStack: ``deploy`` is ``broker local env --localstack`` and ``broker local
deploy --localstack --preset seeds`` in one; ``start FLOW INPUT`` is ``broker local start
local-FLOW INPUT --wait --localstack``; ``inbox`` is ``broker local inbox --localstack``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Final

from broker.local.commands import add_local_commands, run_local
from broker.local.deploy import deploy_seeds
from broker.local.endpoint import AwsEndpoint
from broker.local.target import (
    DEFAULT_LOCALSTACK,
    EmulatorAws,
    localstack_endpoint,
    localstack_health,
)

__all__ = [
    "DEFAULT_ENDPOINT",
    "LocalStackAws",
    "deploy_all",
    "localstack_endpoint",
    "localstack_health",
]

DEFAULT_ENDPOINT: Final = DEFAULT_LOCALSTACK
_CREDENTIALS: Final = "test"  # LocalStack accepts any credentials
_PREFIX: Final = "local"


class LocalStackAws(EmulatorAws):
    """An ``AwsEndpoint`` for a LocalStack that is already running, at the address given
    (the LocalStack suite takes ``LOCALSTACK_ENDPOINT`` as it is; ``broker local`` uses
    ``LoopbackAws``, which refuses one off loopback)."""

    def __init__(self, endpoint_url: str, *, region: str = "us-east-1") -> None:
        super().__init__(endpoint_url, region=region, credentials=_CREDENTIALS)


def deploy_all(aws: AwsEndpoint) -> dict[str, str]:
    """Every seed flow, under fixed names; the settings that serve them (``deploy``)."""
    return {**aws.env(), **deploy_seeds(aws, prefix=_PREFIX, activity=True)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m broker.local.localstack",
        description="The seed flows on LocalStack: an alias of `broker local … --localstack`.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("deploy", help="deploy the seed flows; print the settings to export")
    start = commands.add_parser("start", help="run one execution of a seed flow and wait")
    start.add_argument("flow", choices=["callback", "verification", "transactions", "activity"])
    start.add_argument("input", help="the execution input, JSON")
    start.add_argument("--timeout", default="60")
    commands.add_parser("inbox", help="print (and take) the decision links in the inbox queue")
    args = parser.parse_args(argv)
    if args.command == "deploy":
        steps = [["env", "--localstack"], ["deploy", "--localstack", "--preset", "seeds"]]
    elif args.command == "start":
        start_args = [f"{_PREFIX}-{args.flow}", args.input, "--wait", "--timeout", args.timeout]
        steps = [["start", "--localstack", *start_args]]
    else:
        steps = [["inbox", "--localstack"]]
    local = argparse.ArgumentParser(prog="broker")
    add_local_commands(local.add_subparsers(dest="command"))
    for step in steps:
        code = run_local(local.parse_args(["local", *step]))
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
