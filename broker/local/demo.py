"""``broker demo``: the seed workflows end to end on an embedded moto server, no AWS account.

It starts moto in this process, deploys the three seed flows and a dead-letter queue for
each of their queues, and runs the real `Broker` with the seed handlers, loaded by
reference as ``BROKER_HANDLERS='["handlers.seeds:router"]'`` would. A worker thread
starts a mix of executions while the broker already consumes, so the broker works under
a growing backlog. At the end every execution is checked against what its seed handler decides,
and a summary goes to stdout; progress and logs go to stderr.

Exit codes: 0 every execution ended as its handler decided, 1 some did not (each one is
named), 2 bad arguments or moto not installed, 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, TextIO

import anyio

from broker.cli import event_loop_options
from broker.core.plugins import build_router
from broker.core.settings import BrokerSettings, QueueSettings
from broker.local.moto import (
    EmbeddedAws,
    EmulatorUnavailable,
    ExecutionResult,
    SeedFlows,
    deploy_seed_flows,
    describe_execution,
    running_executions,
)
from broker.observability.stats import Outcome
from broker.service import Broker

__all__ = [
    "Case",
    "Expected",
    "Judgement",
    "Verdict",
    "exit_code",
    "expected_for",
    "judge",
    "plan_executions",
    "run_demo",
    "summary_table",
]

_PREFIX: Final = "demo"
_SEED_HANDLERS: Final = "handlers.seeds:router"
_POLL_INTERVAL_S: Final = 0.5
_PLAIN_PROGRESS_EVERY_S: Final = 5.0
_PROBLEMS_LISTED: Final = 20
_PURCHASE_MESSAGE: Final = "Hello from the broker inside the ProcessPurchase handler"
_REFUND_MESSAGE: Final = "Hello from Refund Processor!"
# Variables that would make the SDK look for a profile or an endpoint of the user's own
# AWS setup instead of the emulator.
_AWS_OVERRIDES: Final = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL_SQS",
    "AWS_ENDPOINT_URL_SFN",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
)


class Case(StrEnum):
    """What an execution exercises: one row of the summary table."""

    CALLBACK = "callback"
    VERIFY_SUCCESS = "verify-success"
    VERIFY_OTHER = "verify-other"
    PURCHASE = "purchase"
    REFUND = "refund"

    @property
    def label(self) -> str:
        return _CASE_LABELS[self]

    @property
    def flow(self) -> str:
        """The seed flow (state machine and queue) it runs through."""
        return _CASE_FLOWS[self]


_CASE_LABELS: Final = {
    Case.CALLBACK: "callback",
    Case.VERIFY_SUCCESS: "verification SUCCESS",
    Case.VERIFY_OTHER: "verification other",
    Case.PURCHASE: "transactions PURCHASE",
    Case.REFUND: "transactions REFUND",
}
_CASE_FLOWS: Final = {
    Case.CALLBACK: "callback",
    Case.VERIFY_SUCCESS: "verification",
    Case.VERIFY_OTHER: "verification",
    Case.PURCHASE: "transactions",
    Case.REFUND: "transactions",
}
# Out of every ten executions: 4 callback, 3 transactions, 3 verification, interleaved so
# that all three queues are busy at once. Within a flow the two cases alternate.
_SLOTS: Final = (
    "callback",
    "transactions",
    "verification",
    "callback",
    "transactions",
    "verification",
    "callback",
    "transactions",
    "verification",
    "callback",
)
_FLOW_CASES: Final = {
    "callback": (Case.CALLBACK, Case.CALLBACK),
    "verification": (Case.VERIFY_SUCCESS, Case.VERIFY_OTHER),
    "transactions": (Case.PURCHASE, Case.REFUND),
}


class Verdict(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED_AS_EXPECTED = "failed as expected"
    UNEXPECTED = "unexpected"
    STUCK = "stuck"


@dataclass(frozen=True)
class PlannedExecution:
    index: int
    case: Case
    input: dict[str, Any]


@dataclass(frozen=True)
class Expected:
    """What the seed handler decides. In `output`, a type stands for any value of it."""

    status: str
    output: Any = None
    error: str | None = None


@dataclass(frozen=True)
class Judgement:
    planned: PlannedExecution
    result: ExecutionResult
    verdict: Verdict
    reason: str | None


# --- the plan and the expectations ------------------------------------------------------


def plan_executions(count: int) -> list[PlannedExecution]:
    seen: Counter[str] = Counter()
    plan: list[PlannedExecution] = []
    for index in range(count):
        flow = _SLOTS[index % len(_SLOTS)]
        case = _FLOW_CASES[flow][seen[flow] % 2]
        seen[flow] += 1
        plan.append(PlannedExecution(index=index, case=case, input=_input_for(case, index)))
    return plan


def _input_for(case: Case, index: int) -> dict[str, Any]:
    if case is Case.VERIFY_SUCCESS:
        return {"in": "SUCCESS", "order": index}
    if case is Case.VERIFY_OTHER:
        return {"in": "RANDOM", "order": index}
    if case is Case.PURCHASE:
        return {"TransactionType": "PURCHASE", "order": index, "amount": 10 + index % 90}
    if case is Case.REFUND:
        return {"TransactionType": "REFUND", "order": index, "amount": 10 + index % 90}
    return {"order": index}


def expected_for(planned: PlannedExecution) -> Expected:
    """Restated from handlers/seeds.py on purpose: the demo checks the handlers too."""
    case = planned.case
    if case is Case.CALLBACK:
        return Expected("SUCCEEDED", output={"body": "Return from callback"})
    if case is Case.VERIFY_SUCCESS:
        return Expected("SUCCEEDED", output={"result": planned.input})
    if case is Case.VERIFY_OTHER:
        return Expected("FAILED", error="NO_SUCCESS_INPUT")
    message = _PURCHASE_MESSAGE if case is Case.PURCHASE else _REFUND_MESSAGE
    return Expected(
        "SUCCEEDED",
        output={
            "TransactionType": planned.input["TransactionType"],
            "Timestamp": str,
            "Message": message,
        },
    )


def judge(expected: Expected, result: ExecutionResult) -> tuple[Verdict, str | None]:
    """The verdict on one execution, and why when it is not the expected one."""
    if result.status == "RUNNING":
        return Verdict.STUCK, "still RUNNING"
    if result.status != expected.status:
        error = f" ({result.error})" if result.error else ""
        return Verdict.UNEXPECTED, f"{result.status}{error}, expected {expected.status}"
    if expected.status == "FAILED":
        if result.error != expected.error:
            return Verdict.UNEXPECTED, f"error {result.error!r}, expected {expected.error!r}"
        return Verdict.FAILED_AS_EXPECTED, None
    if not _matches(result.output, expected.output):
        return Verdict.UNEXPECTED, f"output {_short(result.output)} does not match the handler's"
    return Verdict.SUCCEEDED, None


def _matches(actual: Any, expected: Any) -> bool:
    if isinstance(expected, type):
        return isinstance(actual, expected)
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and actual.keys() == expected.keys()
            and all(_matches(actual[key], value) for key, value in expected.items())
        )
    return bool(actual == expected)


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- setup ------------------------------------------------------------------------------


def _create_dead_letter_queues(aws: EmbeddedAws, flows: SeedFlows) -> dict[str, str]:
    """One dead-letter queue per seed queue, by flow; returns their names."""
    sqs = aws.client("sqs")
    names = {flow: f"{_queue_name(url)}-dlq" for flow, url in flows.queues.items()}
    for name in names.values():
        sqs.create_queue(QueueName=name)
    return names


def _queue_name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def demo_settings(
    aws: EmbeddedAws, flows: SeedFlows, dead_letter_queues: Mapping[str, str]
) -> BrokerSettings:
    """The settings a deployment of the seeds would write, pointing at the emulator."""

    def queue(flow: str, **options: Any) -> QueueSettings:
        return QueueSettings(
            name=_queue_name(flows.queues[flow]),
            dead_letter_queue=dead_letter_queues[flow],
            **options,
        )

    return BrokerSettings(
        queues=(
            # seed 000: {"input", "MyTaskToken"}; one handler for the whole queue.
            queue(
                "callback",
                token_fields=("MyTaskToken",),
                payload_fields=("input",),
                type_attribute=None,
                type_field=None,
                default_handler="callback",
            ),
            # seed 004: {"Payload", "TaskToken"}.
            queue(
                "verification",
                token_fields=("TaskToken",),
                payload_fields=("Payload",),
                type_attribute=None,
                type_field=None,
                default_handler="verify",
            ),
            # seed 001: purchases and refunds share a queue; the `type` attribute routes.
            queue(
                "transactions",
                token_fields=("TaskToken",),
                payload_fields=("input",),
                type_attribute="type",
                type_field=None,
            ),
        ),
        handlers=(_SEED_HANDLERS,),
        entry_points=False,
        http_port=None,
        aws_region=aws.region,
        aws_endpoint_url=aws.endpoint_url,
    )


@contextlib.contextmanager
def _patched_environ(values: Mapping[str, str], remove: Sequence[str] = ()) -> Iterator[None]:
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


def _loopback_without_proxy() -> dict[str, str]:
    loopback = "127.0.0.1,localhost"
    values = {}
    for name in ("NO_PROXY", "no_proxy"):
        current = os.environ.get(name)
        values[name] = f"{current},{loopback}" if current else loopback
    return values


class EmulatorErrors(logging.Filter):
    """Counts and hides moto's own request errors, which werkzeug logs with a traceback.

    moto 5.2 answers HTTP 500 to SendTaskSuccess/Failure now and then while executions
    are being started (see broker/local/moto.py); the broker retries those calls, and the
    summary reports how many there were instead of pages of moto internals.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.seen: Counter[str] = Counter()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        # werkzeug renders the traceback into the message; its last line names the error.
        if record.levelno < logging.ERROR or not message.startswith("Error on request"):
            return True
        with self._lock:
            self.seen[message.rstrip().rsplit("\n", 1)[-1]] += 1
        return False


@contextlib.contextmanager
def _hidden_emulator_errors() -> Iterator[EmulatorErrors]:
    errors = EmulatorErrors()
    logger = logging.getLogger("werkzeug")
    logger.addFilter(errors)
    try:
        yield errors
    finally:
        logger.removeFilter(errors)


def _configure_logging() -> None:
    # Only warnings and errors: the broker's INFO lines would bury the progress line.
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


# --- starting and watching --------------------------------------------------------------


class Launcher:
    """Starts the planned executions one after the other; run() belongs in a worker thread.

    `arns` only grows, and is read from the event loop while it does; `done` is set last.
    """

    def __init__(
        self, aws: EmbeddedAws, flows: SeedFlows, plan: Sequence[PlannedExecution]
    ) -> None:
        self._sfn = aws.client("stepfunctions")
        self._machines = flows.state_machines
        self.plan = plan
        self._run_id = uuid.uuid4().hex[:8]
        self._cancelled = threading.Event()
        self.arns: list[str] = []
        self.began: float | None = None
        self.finished: float | None = None
        self.done = False

    def cancel(self) -> None:
        self._cancelled.set()

    def run(self) -> None:
        self.began = time.monotonic()
        try:
            for planned in self.plan:
                if self._cancelled.is_set():
                    return
                self.arns.append(self._start(planned))
        finally:
            self.finished = time.monotonic()
            self.done = True

    def _start(self, planned: PlannedExecution) -> str:
        name = f"{planned.index:05d}-{planned.case.value}-{self._run_id}"
        response = self._sfn.start_execution(
            stateMachineArn=self._machines[planned.case.flow],
            name=name,
            input=json.dumps(planned.input),
        )
        arn: str = response["executionArn"]
        return arn


@dataclass(frozen=True)
class Snapshot:
    planned: int
    started: int
    completed: int
    elapsed_s: float

    @property
    def running(self) -> int:
        return self.started - self.completed

    @property
    def rate(self) -> float:
        return self.completed / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def line(self) -> str:
        return (
            f"started {self.started}/{self.planned}  completed {self.completed}  "
            f"running {self.running}  {self.rate:.1f} completions/s  {self.elapsed_s:.1f} s"
        )


class Progress:
    """One rewritten line on a terminal; a plain line every few seconds otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        # The first plain line comes after one period: at once it would only say "0".
        self._last_plain = time.monotonic()
        self._width = 0
        self._last: Snapshot | None = None
        self._last_written: Snapshot | None = None

    def show(self, snapshot: Snapshot) -> None:
        self._last = snapshot
        line = snapshot.line()
        if self._tty:
            self._stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
        else:
            now = time.monotonic()
            if now - self._last_plain < _PLAIN_PROGRESS_EVERY_S:
                return
            self._last_plain = now
            self._stream.write(line + "\n")
        self._last_written = snapshot
        self._stream.flush()

    def finish(self) -> None:
        """End the progress display with the last state seen."""
        if self._last is None:
            return
        if self._tty:
            self._stream.write("\n")
        elif self._last is not self._last_written:
            self._stream.write(self._last.line() + "\n")
        self._stream.flush()


def _running_arns(sfn: Any, machine_arns: Sequence[str]) -> set[str]:
    return {arn for machine in machine_arns for arn in running_executions(sfn, machine)}


async def _watch(
    aws: EmbeddedAws, flows: SeedFlows, launcher: Launcher, progress: Progress
) -> None:
    """Poll until every started execution ended and nothing is left to start."""
    sfn = aws.client("stepfunctions")
    machines = list(flows.state_machines.values())
    began = time.monotonic()
    while True:
        # Read `done` before the ARNs: an execution started in between is then seen
        # in the next round rather than missed.
        done = launcher.done
        started = list(launcher.arns)
        running = await anyio.to_thread.run_sync(_running_arns, sfn, machines)
        completed = sum(1 for arn in started if arn not in running)
        elapsed_s = time.monotonic() - began
        progress.show(Snapshot(len(launcher.plan), len(started), completed, elapsed_s))
        if done and completed == len(started):
            return
        await anyio.sleep(_POLL_INTERVAL_S)


async def _exercise(
    aws: EmbeddedAws,
    flows: SeedFlows,
    broker: Broker,
    launcher: Launcher,
    timeout_s: float,
) -> None:
    """Run the broker while the executions start and end; stop it at the end or timeout."""
    progress = Progress(sys.stderr)
    async with anyio.create_task_group() as tasks:
        await tasks.start(broker.run)
        tasks.start_soon(anyio.to_thread.run_sync, launcher.run)
        try:
            with anyio.move_on_after(timeout_s) as deadline:
                await _watch(aws, flows, launcher, progress)
        finally:
            launcher.cancel()
            broker.request_stop()
    progress.finish()
    if deadline.cancelled_caught:
        print(f"timeout: {timeout_s:g} s passed; broker stopped", file=sys.stderr)


# --- the results ------------------------------------------------------------------------


def _judge_all(
    aws: EmbeddedAws, plan: Sequence[PlannedExecution], arns: Sequence[str]
) -> list[Judgement]:
    sfn = aws.client("stepfunctions")
    judgements = []
    # zip: executions never started (a timeout while starting) have no ARN.
    for planned, arn in zip(plan, arns, strict=False):
        result = describe_execution(sfn, arn)
        verdict, reason = judge(expected_for(planned), result)
        judgements.append(Judgement(planned, result, verdict, reason))
    return judgements


def _messages_left(aws: EmbeddedAws, flows: SeedFlows, dlqs: Mapping[str, str]) -> dict[str, int]:
    sqs = aws.client("sqs")
    urls = {_queue_name(url): url for url in flows.queues.values()}
    urls.update({name: sqs.get_queue_url(QueueName=name)["QueueUrl"] for name in dlqs.values()})
    left: dict[str, int] = {}
    for name, url in urls.items():
        attributes = sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        left[name] = sum(int(value) for value in attributes.values())
    return left


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def summary_table(judgements: Sequence[Judgement]) -> list[str]:
    columns = ["executions", *(verdict.value for verdict in Verdict)]
    rows: list[tuple[str, list[int]]] = []
    for case in Case:
        mine = [j for j in judgements if j.planned.case is case]
        rows.append((case.label, _counts(mine)))
    rows.append(("total", _counts(judgements)))
    label_width = max(len("flow"), *(len(label) for label, _ in rows))
    widths = [max(len(column), 6) for column in columns]
    header = "  ".join(
        ["flow".ljust(label_width), *(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    )
    lines = [header, "-" * len(header)]
    for label, counts in rows:
        if label == "total":
            lines.append("-" * len(header))
        cells = (str(n).rjust(w) for n, w in zip(counts, widths, strict=True))
        lines.append("  ".join([label.ljust(label_width), *cells]))
    return lines


def _counts(judgements: Sequence[Judgement]) -> list[int]:
    verdicts = Counter(j.verdict for j in judgements)
    return [len(judgements), *(verdicts[verdict] for verdict in Verdict)]


def _timing(judgements: Sequence[Judgement], launcher: Launcher) -> list[str]:
    ended = [j.result for j in judgements if j.result.stopped_at is not None]
    lines = []
    if launcher.began is not None and launcher.finished is not None and launcher.arns:
        seconds = launcher.finished - launcher.began
        lines.append(
            f"starting     {len(launcher.arns)} executions in {seconds:.1f} s "
            f"({len(launcher.arns) / max(seconds, 1e-9):.0f}/s, moto's pace)"
        )
    if not ended:
        return [*lines, "throughput   no execution ended"]
    first_start = min(r.started_at for r in ended)
    last_stop = max(r.stopped_at for r in ended if r.stopped_at is not None)
    window_s = max((last_stop - first_start).total_seconds(), 1e-3)
    latencies_ms = sorted(
        (r.stopped_at - r.started_at).total_seconds() * 1000
        for r in ended
        if r.stopped_at is not None
    )
    quantiles = "  ".join(
        f"{name} {percentile(latencies_ms, fraction):.0f} ms"
        for name, fraction in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("max", 1.0))
    )
    return [
        *lines,
        f"throughput   {len(ended) / window_s:.1f} executions/s "
        f"({len(ended)} ended in {window_s:.1f} s, first start to last stop)",
        # Step Functions' own dates (1 ms resolution in moto): the queue wait is included.
        f"latency      {quantiles}  (execution startDate to stopDate)",
    ]


def _broker_counters(broker: Broker) -> list[str]:
    stats = broker.stats
    deleters = [consumer.queue.deleter for consumer in broker.consumers]
    outcomes = "  ".join(
        f"{outcome.value} {stats.total(outcome)}" for outcome in Outcome if stats.total(outcome)
    )
    lines = [
        f"broker       received {stats.received.total()}  {outcomes or 'no outcomes'}  "
        f"deleted {sum(d.deleted for d in deleters)} in {sum(d.batches for d in deleters)} "
        "batches"
    ]
    for consumer in broker.consumers:
        queue = consumer.queue
        outcomes = "  ".join(
            f"{outcome.value} {stats.outcomes[(queue.name, outcome)]}"
            for outcome in Outcome
            if stats.outcomes[(queue.name, outcome)]
        )
        deleter = queue.deleter
        failed = f", {deleter.failed} failed" if deleter.failed else ""
        lines.append(
            f"  {queue.name:<18} received {stats.received[queue.name]:>4}  "
            f"{outcomes or 'no outcomes'}  "
            f"deleted {deleter.deleted} in {deleter.batches} batches{failed}"
        )
    return lines


def _emulator_errors(errors: EmulatorErrors) -> list[str]:
    if not errors.seen:
        return []
    total = errors.seen.total()
    lines = [f"moto         {total} request(s) failed inside moto (HTTP 500; clients retry them):"]
    lines.extend(f"  {count}x {error[:200]}" for error, count in errors.seen.most_common())
    return lines


def _problems(judgements: Sequence[Judgement], not_started: int) -> list[str]:
    bad = [j for j in judgements if j.verdict in {Verdict.UNEXPECTED, Verdict.STUCK}]
    if not bad and not not_started:
        return [f"verdict      all {len(judgements)} executions ended as their handlers decided"]
    counts = Counter(j.verdict for j in bad)
    summary = f"{counts[Verdict.UNEXPECTED]} unexpected, {counts[Verdict.STUCK]} stuck"
    if not_started:
        summary += f", {not_started} never started"
    lines = [f"verdict      FAILED: {summary}"]
    for judgement in bad[:_PROBLEMS_LISTED]:
        name = judgement.result.arn.rsplit(":", 1)[-1]
        lines.append(f"  {name} ({judgement.planned.case.label}): {judgement.reason}")
    if len(bad) > _PROBLEMS_LISTED:
        lines.append(f"  … and {len(bad) - _PROBLEMS_LISTED} more")
    return lines


def _report(
    judgements: Sequence[Judgement],
    launcher: Launcher,
    broker: Broker,
    left: Mapping[str, int],
    planned: int,
    errors: EmulatorErrors,
) -> list[str]:
    leftovers = "  ".join(f"{name} {count}" for name, count in left.items() if count)
    return [
        "",
        *summary_table(judgements),
        "",
        *_timing(judgements, launcher),
        *_broker_counters(broker),
        *_emulator_errors(errors),
        f"queues       messages left: {leftovers or 'none (seed and dead-letter queues empty)'}",
        *_problems(judgements, planned - len(judgements)),
    ]


# --- the command ------------------------------------------------------------------------


def _demo(aws: EmbeddedAws, executions: int, timeout_s: float) -> int:
    flows = deploy_seed_flows(aws, prefix=_PREFIX)
    dlqs = _create_dead_letter_queues(aws, flows)
    settings = demo_settings(aws, flows, dlqs)
    broker = Broker(settings, build_router(settings))
    plan = plan_executions(executions)
    launcher = Launcher(aws, flows, plan)
    print(
        f"broker demo: {executions} executions of the seed flows on moto at {aws.endpoint_url}, "
        f"handlers from {_SEED_HANDLERS}",
        file=sys.stderr,
    )
    with _hidden_emulator_errors() as errors:
        anyio.run(
            _exercise, aws, flows, broker, launcher, timeout_s, backend_options=event_loop_options()
        )
        print(f"checking {len(launcher.arns)} executions …", file=sys.stderr)
        judgements = _judge_all(aws, plan, launcher.arns)
        left = _messages_left(aws, flows, dlqs)
    print("\n".join(_report(judgements, launcher, broker, left, len(plan), errors)))
    return exit_code(judgements, len(plan))


def exit_code(judgements: Sequence[Judgement], planned: int) -> int:
    """0 only if every planned execution ran and ended as its handler decided."""
    problems = any(j.verdict in {Verdict.UNEXPECTED, Verdict.STUCK} for j in judgements)
    return 1 if problems or len(judgements) < planned else 0


def run_demo(args: argparse.Namespace) -> int:
    """`broker demo`: see the module docstring."""
    executions: int = args.executions
    timeout_s: float = args.timeout
    if executions < 1 or not timeout_s > 0:
        print(
            "broker demo: --executions must be at least 1 and --timeout positive", file=sys.stderr
        )
        return 2
    _configure_logging()
    try:
        # The user's own AWS setup must not leak in: moto reads the profile on import, and
        # a proxy from the environment must not see loopback traffic. The broker then
        # finds the emulator's dummy credentials the way it finds real ones in production.
        with (
            _patched_environ(_loopback_without_proxy(), remove=_AWS_OVERRIDES),
            EmbeddedAws() as aws,
            _patched_environ(aws.env()),
        ):
            return _demo(aws, executions, timeout_s)
    except EmulatorUnavailable as exc:
        print(f"broker demo: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nbroker demo: interrupted", file=sys.stderr)
        return 130
