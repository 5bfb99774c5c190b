"""What each ``broker local`` command does (``local.commands`` parses the arguments).

Exit codes: 0 done, 1 the emulator cannot be used (down, port taken, moto missing, a flow
or queue that is not there, an AWS error), 2 refused before any call (an endpoint not on
loopback, a name AWS would refuse, input that is not JSON). Every error is one line on
stderr; stdout carries only what is meant for ``eval`` or a pipe.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
from typing import Any, Final

from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from broker.local.deploy import (
    Deployed,
    NameRefused,
    check_heartbeat,
    check_name,
    deploy_activity,
    deploy_decisions,
    deploy_queue,
    deploy_seeds,
    merge_rows,
)
from broker.local.executions import start_executions, wait_for_executions
from broker.local.shapes import SHAPES
from broker.local.target import (
    CREDENTIALS,
    DEFAULT_PORT,
    DEFAULT_REGION,
    LocalEndpointError,
    LoopbackAws,
    emulator_kind,
    localstack_endpoint,
    localstack_health,
    loopback_endpoint,
    not_listening,
    shell_lines,
)

__all__ = ["run"]

_ENDED: Final = ("SUCCEEDED", "FAILED")
_NO_ENDPOINT: Final = (
    'AWS_ENDPOINT_URL is not set: run eval "$(broker local env)" first '
    "(or give --endpoint URL, or --localstack)"
)


class _Unusable(Exception):
    """The emulator cannot do it (exit 1); the message is the line the user sees."""


def run(args: argparse.Namespace) -> int:
    command: str = args.local_command
    try:
        if command == "up":
            return _up(args)
        if command == "env":
            return _env(args)
        if command == "deploy":
            return _deploy(args)
        if command == "start":
            return _start(args)
        return _inbox(args)
    except (LocalEndpointError, NameRefused) as exc:
        return _fail(command, exc, 2)
    except _Unusable as exc:
        return _fail(command, exc, 1)
    except EndpointConnectionError as exc:
        return _fail(
            command,
            f"no emulator answers at {exc.kwargs.get('endpoint_url')} "
            "(start one: broker local up, or make localstack)",
            1,
        )
    except (BotoCoreError, ClientError) as exc:
        return _fail(command, exc, 1)


def _fail(command: str, problem: object, code: int) -> int:
    print(f"broker local {command}: {problem}", file=sys.stderr)
    return code


def _region(args: argparse.Namespace) -> str:
    region: str = (
        args.region
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or DEFAULT_REGION
    )
    return region


def _aws(args: argparse.Namespace) -> LoopbackAws:
    """The endpoint to talk to: --endpoint, --localstack (checked up), AWS_ENDPOINT_URL."""
    if args.endpoint:
        aws = LoopbackAws(args.endpoint, region=_region(args))
    elif args.localstack:
        url = loopback_endpoint(localstack_endpoint())
        problem = localstack_health(url)
        if problem is not None:
            raise _Unusable(f"{problem}; start it with `make localstack`")
        aws = LoopbackAws(url, region=_region(args))
    else:
        from_env = os.environ.get("AWS_ENDPOINT_URL")
        if not from_env:
            raise LocalEndpointError(_NO_ENDPOINT)
        aws = LoopbackAws(from_env, region=_region(args))
    problem = not_listening(aws.endpoint_url)
    if problem is not None:
        raise _Unusable(f"{problem}; start one: broker local up, or make localstack")
    return aws


def _exports(values: dict[str, str]) -> None:
    for name, value in values.items():
        print(f"export {name}={shlex.quote(value)}")


# --- up, env -----------------------------------------------------------------------------


def _up(args: argparse.Namespace) -> int:
    from broker.local.moto import EmbeddedAws, EmulatorUnavailable  # the `local` extra

    stop = {signal.SIGINT, signal.SIGTERM}
    # Blocked before moto's threads exist, which inherit the mask: only sigwait() below
    # takes these signals, so a stop is a clean return, not a KeyboardInterrupt somewhere.
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    try:
        aws = EmbeddedAws(port=args.port, region=_region(args))
        try:
            aws.start()
        except EmulatorUnavailable as exc:
            raise _Unusable(str(exc)) from exc
        except OSError as exc:
            raise _Unusable(
                f"{exc.strerror or exc} (another `broker local up`? --port P picks another "
                "port; then `broker local env --port P`)"
            ) from exc
        except RuntimeError as exc:
            raise _Unusable(str(exc)) from exc
        try:
            for line in shell_lines(aws.env()):
                print(line)
            print(
                f"# ready: moto on {aws.endpoint_url}, Step Functions executing; in another "
                'terminal: eval "$(broker local env'
                + ("" if args.port == DEFAULT_PORT else f" --port {args.port}")
                + ')"; Ctrl-C stops it',
                flush=True,
            )
            received = signal.sigwait(stop)
            print(f"broker local up: {signal.Signals(received).name}: stopped", file=sys.stderr)
        finally:
            aws.stop()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stop)
    return 0


def _env(args: argparse.Namespace) -> int:
    kind = "localstack" if args.localstack else "moto"
    if args.endpoint:
        url = loopback_endpoint(args.endpoint)
    elif args.localstack:
        url = loopback_endpoint(localstack_endpoint())
    else:
        url = f"http://127.0.0.1:{args.port}"  # broker local up's
    aws = LoopbackAws(url, region=_region(args), credentials=CREDENTIALS[kind])
    print("\n".join(shell_lines(aws.env())))
    return 0


# --- deploy ------------------------------------------------------------------------------


def _deploy(args: argparse.Namespace) -> int:
    # Names first: a name AWS would refuse is refused before any call.
    shape = SHAPES[args.shape]
    if args.queue is not None:
        check_name(args.queue, "queue", suffix="-dlq")
        if shape.type_required and args.type is None:
            raise NameRefused(f"--shape {shape.name} carries no type in its body: give --type")
    elif args.activity is not None:
        check_name(args.activity, "activity")
    else:
        check_name(args.prefix, "prefix")
        if args.heartbeat is not None or args.decisions:
            # The seed flows come with their own: a heartbeat on the activity, the topic.
            raise NameRefused("--heartbeat and --decisions are for --queue and --activity")
    check_heartbeat(args.heartbeat, activity=args.activity is not None)
    if args.decisions:
        check_name(f"{args.prefix}-decisions-inbox", "prefix", suffix="-dlq")
    aws = _aws(args)
    if args.preset is not None:
        return _deploy_seeds(aws, args.prefix)
    if args.activity is not None:
        if emulator_kind(aws.endpoint_url) == "moto":
            raise _Unusable("moto has no GetActivityTask: deploy activities on LocalStack")
        deployed = deploy_activity(aws, args.activity, args.type, heartbeat_s=args.heartbeat)
        what = f"activity {args.activity} and its flow {deployed.flow}"
    else:
        deployed = deploy_queue(aws, args.queue, shape, args.type, heartbeat_s=args.heartbeat)
        what = (
            f"queue {args.queue} (dead letters: {deployed.row['dead_letter_queue']}), "
            f"flow {deployed.flow} sending the {shape.name} shape"
        )
    if args.heartbeat is not None:
        what += f", HeartbeatSeconds {args.heartbeat}"
    exports = {deployed.variable: json.dumps(_rows(deployed))}
    if args.decisions:
        exports |= deploy_decisions(aws, prefix=args.prefix)
        what += (
            f", decision topic {args.prefix}-decisions (links: broker local inbox"
            f"{'' if args.prefix == 'local' else ' --prefix ' + args.prefix})"
        )
    _exports(exports)
    print(
        f"broker local deploy: {what}; try it: broker local start {deployed.flow} "
        "'<input JSON>' --wait",
        file=sys.stderr,
    )
    return 0


def _rows(deployed: Deployed) -> list[Any]:
    return merge_rows(os.environ.get(deployed.variable), [deployed.row])


def _deploy_seeds(aws: LoopbackAws, prefix: str) -> int:
    activity = emulator_kind(aws.endpoint_url) != "moto"
    _exports(deploy_seeds(aws, prefix=prefix, activity=activity))
    flows = ["callback", "verification", "transactions", *(["activity"] if activity else [])]
    print(
        "broker local deploy: the seed flows "
        + ", ".join(f"{prefix}-{flow}" for flow in flows)
        + ("" if activity else " (no activity flow: moto has no GetActivityTask)"),
        file=sys.stderr,
    )
    return 0


# --- start, inbox ------------------------------------------------------------------------


def _start(args: argparse.Namespace) -> int:
    try:
        execution_input = json.loads(args.input)
    except ValueError as exc:
        raise NameRefused(f"INPUT is not JSON ({exc}): {args.input!r}") from exc
    check_name(args.flow, "flow")
    aws = _aws(args)
    sfn = aws.client("stepfunctions")
    machines = {
        machine["name"]: machine["stateMachineArn"]
        for page in sfn.get_paginator("list_state_machines").paginate()
        for machine in page["stateMachines"]
    }
    if args.flow not in machines:
        deployed = ", ".join(sorted(machines)) or "none"
        raise _Unusable(
            f"no flow {args.flow!r} at {aws.endpoint_url} (deployed: {deployed}); "
            "broker local deploy makes one"
        )
    # moto, like AWS, takes a repeated name with the same input for the same execution:
    # every start gets a fresh one.
    (arn,) = start_executions(aws, machines[args.flow], [execution_input], name_prefix=args.flow)
    if not args.wait:
        print(arn)
        return 0
    result = wait_for_executions(aws, [arn], timeout_s=args.timeout)[arn]
    ended: dict[str, Any] = {"status": result.status, "output": result.output}
    if result.error is not None or result.cause is not None:
        ended |= {"error": result.error, "cause": result.cause}
    print(json.dumps(ended))
    return 0 if result.status in _ENDED else 1


def _inbox(args: argparse.Namespace) -> int:
    """The approval notifications in the inbox queue, one JSON line each (taken off the
    queue: each is printed once)."""
    aws = _aws(args)
    sqs = aws.client("sqs")
    name = f"{args.prefix}-decisions-inbox"
    try:
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    except sqs.exceptions.QueueDoesNotExist as exc:
        raise _Unusable(
            f"no queue {name} at {aws.endpoint_url}: broker local deploy --preset seeds "
            f"--prefix {args.prefix} makes it"
        ) from exc
    received = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=2)
    for message in received.get("Messages", ()):
        print(message["Body"])
        sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return 0
