"""``broker local``: a handler author's loop on moto or LocalStack (arguments and dispatch).

This module is only the parser (with ``local.shapes`` and ``local.target``, plain
data), so that building ``broker``'s parser loads no botocore and no moto: each
command's work is in ``local.actions``, imported when the command runs.
"""

from __future__ import annotations

import argparse
from typing import Any, Final

# Both are plain data: no botocore, no moto.
from broker.local.shapes import DEFAULT_SHAPE, SHAPES
from broker.local.target import DEFAULT_PORT

__all__ = ["add_local_commands", "run_local"]

_LOCAL = """\
Run your own handlers against a local AWS emulator: the embedded moto (`broker local up`)
or LocalStack (`make localstack`). Every command talks to loopback only.

example:
  broker local up                                     # terminal 1: moto on 127.0.0.1:5055
  eval "$(broker local env)"                          # terminal 2: AWS_* pointing at it
  eval "$(broker local deploy --queue orders --type order)"
  BROKER_HANDLERS='["shop:router"]' broker run &
  broker local start orders '{"id": 7, "quantity": 2}' --wait
"""

_COMMANDS: Final[dict[str, tuple[str, str, str]]] = {
    "up": (
        "run the embedded moto server in the foreground",
        "moto on 127.0.0.1 (port 5055 unless --port), Step Functions executing state machines;"
        "\nprints the export lines for it, then `# ready`; SIGINT or SIGTERM stops it (exit 0)."
        "\nNeeds the `local` extra: pip install 'sfn-callback-broker[local]'.",
        "broker local up\n  broker local up --port 5056   # then: broker local env --port 5056",
    ),
    "env": (
        "print the export lines for a local emulator (starts nothing)",
        "AWS_ENDPOINT_URL, the region, dummy credentials and NO_PROXY for loopback, after an"
        "\n`unset` of the AWS variables that would win over them; for eval.",
        'eval "$(broker local env)"\n  eval "$(broker local env --localstack)"',
    ),
    "deploy": (
        "create a queue and its flow (or an activity, or the seed flows); print BROKER_*",
        "--queue NAME: the queue, NAME-dlq and a .waitForTaskToken state machine NAME whose"
        "\nmessage has --shape's body. --activity NAME: the activity and a state machine"
        "\nNAME with one task on it (LocalStack: moto has no GetActivityTask). --preset"
        "\nseeds: the seed flows, as `make demo` and the LocalStack walk use them."
        "\n--heartbeat S: the task's HeartbeatSeconds (else heartbeats get InvalidToken)."
        "\n--decisions: the topic PREFIX-decisions, its inbox and the decision settings."
        "\nPrints the BROKER_* export lines that serve what it made (BROKER_QUEUES and"
        "\nBROKER_ACTIVITIES keep the other rows already in the environment). Deploying"
        "\nagain changes nothing. The endpoint is AWS_ENDPOINT_URL, --endpoint or"
        "\n--localstack, and must be on loopback.",
        'eval "$(broker local deploy --queue orders --type order)"\n'
        '  eval "$(broker local deploy --queue refunds --shape seed-004 --type refund)"\n'
        '  eval "$(broker local deploy --queue approvals --heartbeat 60 --decisions)"\n'
        '  eval "$(broker local deploy --activity review --type review)"   # LocalStack\n'
        '  eval "$(broker local deploy --preset seeds)"',
    ),
    "start": (
        "start an execution of a deployed flow; --wait prints how it ended",
        "FLOW is the state machine's name (the queue or activity name deploy used; a seed"
        "\nflow is PREFIX-callback, …). Without --wait it prints the execution ARN; with"
        '\n--wait one JSON line {"status", "output"} (with "error" and "cause" if it'
        "\nfailed) and exits 0 once it ended SUCCEEDED or FAILED, 1 otherwise (still running"
        "\nat --timeout, timed out, aborted). Bad JSON input exits 2.",
        'broker local start orders \'{"id": 7, "quantity": 2}\' --wait',
    ),
    "inbox": (
        "print (and take) the decision links the seed approval handler sent",
        "The notifications in PREFIX-decisions-inbox, one JSON line each, taken off the"
        "\nqueue so that each is printed once: open approve_url or reject_url in a browser.",
        "broker local inbox",
    ),
}


def add_local_commands(subparsers: Any) -> argparse.ArgumentParser:
    """``local`` and its subcommands on ``broker``'s subparsers."""
    local: argparse.ArgumentParser = subparsers.add_parser(
        "local",
        help="your handlers on a local emulator: up, env, deploy, start, inbox",
        description=_LOCAL,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = local.add_subparsers(dest="local_command", metavar="COMMAND", required=True)
    parsers = {
        name: commands.add_parser(
            name,
            help=summary,
            description=f"{summary}.\n\n{text}",
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        for name, (summary, text, example) in _COMMANDS.items()
    }
    parsers["up"].add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}"
    )
    for name in ("up", "env", "deploy", "start", "inbox"):
        parsers[name].add_argument(
            "--region", help="default AWS_REGION, AWS_DEFAULT_REGION, else us-east-1"
        )
    for name in ("env", "deploy", "start", "inbox"):
        target = parsers[name].add_mutually_exclusive_group()
        if name == "env":
            target.add_argument(
                "--port", type=int, default=DEFAULT_PORT, help="broker local up's --port"
            )
        target.add_argument(
            "--localstack",
            action="store_true",
            help="LocalStack: LOCALSTACK_ENDPOINT, else http://127.0.0.1:4566",
        )
        target.add_argument("--endpoint", help="an emulator's URL on loopback")
    deploy = parsers["deploy"]
    shapes = "\n".join(f"  {shape.name:<9} {shape.summary}" for shape in SHAPES.values())
    deploy.epilog = f"shapes (--shape):\n{shapes}\n\n{deploy.epilog}"
    what = deploy.add_mutually_exclusive_group(required=True)
    what.add_argument("--queue", help="the queue (and flow) to create")
    what.add_argument("--activity", help="the activity (and flow) to create")
    what.add_argument("--preset", choices=["seeds"], help="the seed flows")
    deploy.add_argument("--type", help="the message type your handler is registered for")
    deploy.add_argument(
        "--shape",
        choices=list(SHAPES),
        default=DEFAULT_SHAPE,
        help="the message body (default broker: the broker's contract; seed-*: the seeds')",
    )
    deploy.add_argument("--heartbeat", type=int, metavar="S", help="the task's HeartbeatSeconds")
    deploy.add_argument("--decisions", action="store_true", help="a decision topic and inbox")
    deploy.add_argument("--prefix", default="local", help="--preset, --decisions: names' prefix")
    start = parsers["start"]
    start.add_argument("flow", help="the state machine's name")
    start.add_argument("input", help="the execution input, JSON")
    start.add_argument("--wait", action="store_true", help="wait and print how it ended")
    start.add_argument("--timeout", type=float, default=60.0, help="seconds --wait waits")
    parsers["inbox"].add_argument("--prefix", default="local", help="the seeds' prefix")
    return local


def run_local(args: argparse.Namespace) -> int:
    """Run the parsed ``broker local`` command; its exit code."""
    from broker.local.actions import run  # botocore and moto: only when a command runs

    return run(args)
