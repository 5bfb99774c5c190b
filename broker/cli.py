"""The ``broker`` command: run, check, handlers, healthcheck, redrive, decisions,
idempotency, demo.

Exit codes: 0 done (a signal-initiated stop included), 1 a runtime failure (for
example a queue that does not exist, denied access, no credentials, an endpoint that
cannot be reached), 2 bad settings or handlers (a missing region included).
``check`` exits 1 when it found problems; ``healthcheck`` exits only 0 or 1, since
Docker reserves 2 in ``HEALTHCHECK``.
"""

from __future__ import annotations

import logging
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import anyio
from anyio.abc import TaskStatus
from botocore.exceptions import BotoCoreError, ClientError

from broker.activities.poller import lookup_activity, resolve_activity
from broker.aws.clients import open_clients
from broker.aws.dynamo import create_table, table_problems
from broker.aws.sns import open_topic
from broker.aws.startup import StartupRetry, describe_aws_error
from broker.cli_parser import build_parser
from broker.core.errors import BrokerError, ConfigError, RegistrationError
from broker.core.loop import event_loop_options, freeze_startup_heap
from broker.core.plugins import ENTRY_POINT_GROUP, build_router
from broker.core.router import Router
from broker.core.settings import ENV_PREFIX, BrokerSettings, load_settings
from broker.decisions.links import new_key
from broker.observability.guard import guard_output
from broker.observability.logs import configure_logging
from broker.service import Broker, configuration_problems
from broker.shutdown import leave_abandoned_runs, watch_signals
from broker.sqs.lookup import resolve_queue
from broker.sqs.redrive import redrive

__all__ = ["main", "run_broker"]

log = logging.getLogger("broker")

_HEALTHCHECK_TIMEOUT_S: Final = 3.0
_ENDPOINT_LOGGER: Final = "botocore.configprovider"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(arguments)
    except SystemExit as exc:
        # argparse exits 2 on a usage error; a HEALTHCHECK must only ever see 0 or 1.
        if exc.code not in (0, None) and "healthcheck" in arguments:
            return 1
        raise
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "demo":
        from broker.local.demo import run_demo  # moto is an optional extra: import only when asked

        return run_demo(args)
    if args.command == "local":
        from broker.local.commands import run_local  # the emulator tooling: only when asked

        return run_local(args)
    if args.command == "healthcheck":
        return _healthcheck(args.config, ready=args.ready)
    if args.command == "decisions":
        # keygen, the only subcommand: a key for BROKER_DECISION_KEYS, no settings needed.
        print(new_key())
        return 0
    try:
        settings = load_settings(args.config)
        configure_logging(
            settings.log_level,
            settings.log_format,
            settings.log_levels,
            token_fields=[field for queue in settings.queues for field in queue.token_fields],
        )
        _quiet_endpoint_lookup(settings)
        if args.command == "redrive":
            return _run_async(_redrive, settings, args.dead_letter_queue, args.to, args.max)
        if args.command == "idempotency":
            return _run_async(_create_table, settings, args.table)
        router = build_router(settings)
        if args.command == "handlers":
            return _print_handlers(router)
        if args.command == "check":
            return _run_async(_check, settings, router)
        return _run_async(run_broker, settings, router)
    except BrokerError as exc:
        code = _report(exc)
        if args.command == "check":
            # check ends with its summary line even when it could not begin its checks.
            print("check: the settings or the handlers did not load; 1 problem")
        return code
    except (BotoCoreError, ClientError) as exc:
        # An AWS error no lookup translated (a later call of redrive): one line, not a
        # traceback.
        return _report(describe_aws_error(exc, f"broker {args.command}", api="an AWS call"))
    except BaseExceptionGroup as group:
        # Errors raised inside the broker's task groups arrive grouped.
        matched, rest = group.split(BrokerError)
        if matched is None or rest is not None:
            raise
        codes = [_report(exc) for exc in _leaves(matched)]
        return max(codes)


def _quiet_endpoint_lookup(settings: BrokerSettings) -> None:
    """botocore says at INFO where each client's endpoint came from ("Found endpoint for
    dynamodb via: environment_service"): noise in a command's output and in every start,
    unless the settings ask for that logger."""
    if _ENDPOINT_LOGGER not in settings.log_levels:
        level = max(logging.WARNING, logging.getLevelName(settings.log_level))
        logging.getLogger(_ENDPOINT_LOGGER).setLevel(level)


def _report(exc: BaseException) -> int:
    print(f"broker: {exc}", file=sys.stderr)
    return 2 if isinstance(exc, ConfigError | RegistrationError) else 1


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        leaves.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return leaves


def _healthcheck(config: Path | None, *, ready: bool) -> int:
    """Ask the running broker's /livez (or /readyz): for HEALTHCHECK and ECS checks.

    Exits 0 (healthy) or 1 (anything else, bad settings included): Docker reserves 2.
    """
    try:
        settings = load_settings(config)
    except BrokerError as exc:
        print(f"broker: {exc}", file=sys.stderr)
        return 1
    if not settings.http_port:
        state = "off" if settings.http_port is None else "0 (any free port)"
        print(
            f"broker: {ENV_PREFIX}HTTP_PORT is {state}: set the port the running broker listens on",
            file=sys.stderr,
        )
        return 1
    url = f"http://127.0.0.1:{settings.http_port}/{'readyz' if ready else 'livez'}"
    try:
        with urllib.request.urlopen(url, timeout=_HEALTHCHECK_TIMEOUT_S) as reply:
            print(reply.read().decode().strip())
            return 0
    except urllib.error.HTTPError as exc:
        print(exc.read().decode().strip())
    except OSError as exc:
        print(f"broker: {url}: {exc}", file=sys.stderr)
    return 1


def _run_async(func: Any, *args: Any) -> int:
    result: int = anyio.run(func, *args, backend_options=event_loop_options())
    return result


async def run_broker(settings: BrokerSettings, router: Router) -> int:
    """Run until SIGINT/SIGTERM; a second signal stops at once (``broker.shutdown``)."""
    guard_output()  # a handler's print, a traceback nobody caught: no token either
    broker = Broker(settings, router)
    async with anyio.create_task_group() as root:
        root.start_soon(watch_signals, broker)

        async def serve(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            await broker.run(task_status=task_status)
            root.cancel_scope.cancel()  # drained: the signal watcher has nothing left to do

        await root.start(serve)
        freeze_startup_heap()
    leave_abandoned_runs(broker)
    return 0


async def _check(settings: BrokerSettings, router: Router) -> int:
    """Every start-up check ``run`` makes, with its lookups and retries; creates nothing."""
    problems: list[str] = []
    warnings: list[str] = []

    def problem(what: str, exc: BaseException) -> None:
        problems.append(what)
        print(f"{what}: PROBLEM: {exc}")

    def warning(what: str, text: str) -> None:
        # What `run` warns about at start-up: it starts, but a person should look.
        warnings.append(what)
        print(f"{what}: WARNING: {text}")

    for refusal in configuration_problems(settings, router):
        problem("settings", refusal)
    queues_ok = activities_ok = to_create = 0
    retry = StartupRetry.from_settings(settings)
    try:
        async with open_clients(settings) as clients:
            for queue in settings.queues:
                try:
                    found = await resolve_queue(clients.sqs, queue, retry)
                except BrokerError as exc:
                    problem(f"queue {queue.name}", exc)
                    continue
                queues_ok += 1
                attributes = found.attributes
                dead_letters = (
                    f"dead-letter queue {found.dead_letter_url}"
                    if found.dead_letter_url
                    else "no dead_letter_queue"
                )
                print(
                    f"queue {queue.name}: ok ({found.url}, "
                    f"~{attributes.get('ApproximateNumberOfMessages')} messages, "
                    f"visibility {attributes.get('VisibilityTimeout')}s, {dead_letters})"
                )
                if not found.dead_letter_url:
                    redrive = "with" if "RedrivePolicy" in attributes else "WITHOUT"
                    warning(
                        f"queue {queue.name}",
                        "no dead_letter_queue setting: poison messages are left to the "
                        f"queue's redrive policy (the queue has been found {redrive} one)",
                    )
            for activity in settings.activities:
                try:
                    if activity.create_if_missing:
                        # run would create it; check only looks.
                        arn = await lookup_activity(clients.sfn, activity, retry=retry)
                    else:
                        arn = (await resolve_activity(clients.sfn, activity, retry=retry)).arn
                except BrokerError as exc:
                    problem(f"activity {activity.name}", exc)
                    continue
                if not arn:
                    to_create += 1
                    print(f"activity {activity.name}: not found; would be created at start-up")
                    continue
                activities_ok += 1
                print(f"activity {activity.name}: ok ({arn}, {activity.pollers} poller(s))")
            if settings.idempotency_table and clients.dynamodb is not None:
                try:
                    table = await table_problems(
                        clients.dynamodb, settings.idempotency_table, retry
                    )
                except BrokerError as exc:
                    problem(f"idempotency table {settings.idempotency_table}", exc)
                else:
                    print(f"idempotency table {settings.idempotency_table}: ok ({table.line()})")
            try:
                topic = await open_topic(clients.sns, settings, retry, router)
            except BrokerError as exc:
                problem(f"decision topic {settings.decision_topic}", exc)
            else:
                if topic is not None:
                    print(f"decision topic {settings.decision_topic}: ok ({topic.arn})")
                elif settings.decision_topic:
                    print(
                        f"decision topic {settings.decision_topic}: not looked up "
                        "(no handler has notify=True)"
                    )
    except BrokerError as exc:  # no region, a lean client that cannot start
        problem("aws", exc)
    _print_handlers(router)
    summary = [
        _count(queues_ok, "queue") + " ok",
        _count(activities_ok, "activity", "activities") + " ok",
    ]
    if to_create:
        summary.append(_count(to_create, "activity", "activities") + " to create at start-up")
    summary.append(_count(len(router), "handler type"))
    counts = _count(len(problems), "problem")
    if warnings:
        counts += ", " + _count(len(warnings), "warning")
    print(f"check: {', '.join(summary)}; {counts}")
    return 1 if problems else 0


def _count(n: int, singular: str, plural: str | None = None) -> str:
    return f"{n} {singular if n == 1 else plural or singular + 's'}"


async def _redrive(
    settings: BrokerSettings, dead_letter_queue: str, to: str | None, max_messages: int | None
) -> int:
    async with open_clients(settings) as clients:
        report = await redrive(
            clients.sqs,
            dead_letter_queue,
            sources=[queue.name for queue in settings.queues],
            to=to,
            max_messages=max_messages,
        )
    print("\n".join(report.lines()))
    return 1 if report.failed or report.not_allowed else 0


async def _create_table(settings: BrokerSettings, table: str) -> int:
    """``broker idempotency create-table``: the table, unless it exists; checked."""
    settings = settings.model_copy(update={"idempotency_table": table})
    async with open_clients(settings) as clients:
        assert clients.dynamodb is not None  # opened: the setting is set
        try:
            state, created = await create_table(clients.dynamodb, table)
        except (BotoCoreError, ClientError) as exc:
            raise describe_aws_error(
                exc, f"idempotency table {table!r}", api="CreateTable", client=clients.dynamodb
            ) from exc
    print(f"idempotency table {table}: {'created' if created else 'exists'} ({state.line()})")
    for problem in state.problems():
        print(f"idempotency table {table}: PROBLEM: {problem}")
    if not state.problems():
        print(f"set {ENV_PREFIX}IDEMPOTENCY_TABLE={table}")
    return 1 if state.problems() else 0


def _print_handlers(router: Router) -> int:
    if not len(router):
        print(
            f"no handlers registered (set BROKER_HANDLERS or install a plugin in the "
            f"{ENTRY_POINT_GROUP!r} entry-point group)"
        )
        return 0
    width = max(len(route.message_type) for route in router)
    for route in sorted(router, key=lambda r: r.message_type):
        typed = " typed" if route.payload_adapter else ""
        once = " idempotent" if route.options.idempotent else ""
        print(f"{route.message_type:<{width}}  {route.handler_name}{typed}{once}  [{route.origin}]")
    return 0
