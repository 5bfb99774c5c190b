"""``broker demo``, the run: the broker consumes while a worker thread starts executions.

`exercise` runs the real `Broker`, a `Launcher` and the `Person` who answers the
approvals side by side until every started execution has ended, or is waiting as planned
(or the timeout passes); `judge_all` and `messages_left` then read what the emulator holds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any, Final

import anyio

from broker.core.settings import BrokerSettings, QueueSettings
from broker.local.demo_person import Person
from broker.local.demo_plan import Case, Judgement, PlannedExecution, expected_for, judge
from broker.local.demo_progress import Progress, Snapshot
from broker.local.endpoint import AwsEndpoint
from broker.local.executions import describe_execution, running_executions
from broker.local.flows import (
    SEED_ROUTERS,
    SeedFlows,
    queue_name,
    seed_decision_settings,
    seed_queue_settings,
)
from broker.service import Broker

__all__ = [
    "EmulatorErrors",
    "Launcher",
    "demo_settings",
    "exercise",
    "hidden_emulator_errors",
    "judge_all",
    "messages_left",
]

_POLL_INTERVAL_S: Final = 0.5


def demo_settings(aws: AwsEndpoint, flows: SeedFlows) -> BrokerSettings:
    """The settings a deployment of the seeds would write, pointing at the emulator; the
    decision listener on a free loopback port."""
    decisions = seed_decision_settings(flows, port=_free_port())
    return BrokerSettings(
        queues=tuple(QueueSettings.model_validate(row) for row in seed_queue_settings(flows)),
        handlers=SEED_ROUTERS,
        entry_points=False,
        http_port=None,
        aws_region=aws.region,
        aws_endpoint_url=aws.endpoint_url,
        decision_topic=decisions["BROKER_DECISION_TOPIC"],
        decision_keys=json.loads(decisions["BROKER_DECISION_KEYS"]),
        decision_base_url=decisions["BROKER_DECISION_BASE_URL"],
        decision_host=decisions["BROKER_DECISION_HOST"],
        decision_port=int(decisions["BROKER_DECISION_PORT"]),
    )


def _free_port() -> int:
    # The links must name the port before the listener binds it: ask the kernel for a
    # free one (another process taking it in between would fail the start, loudly).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


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
def hidden_emulator_errors() -> Iterator[EmulatorErrors]:
    errors = EmulatorErrors()
    logger = logging.getLogger("werkzeug")
    logger.addFilter(errors)
    try:
        yield errors
    finally:
        logger.removeFilter(errors)


class Launcher:
    """Starts the planned executions one after the other; run() belongs in a worker thread.

    `arns` only grows, and is read from the event loop while it does; `done` is set last.
    """

    def __init__(
        self, aws: AwsEndpoint, flows: SeedFlows, plan: Sequence[PlannedExecution]
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

    @property
    def seconds(self) -> float | None:
        """How long starting took, once it ended."""
        if self.began is None or self.finished is None:
            return None
        return self.finished - self.began

    def _start(self, planned: PlannedExecution) -> str:
        name = f"{planned.index:05d}-{planned.case.value}-{self._run_id}"
        response = self._sfn.start_execution(
            stateMachineArn=self._machines[planned.case.flow],
            name=name,
            input=json.dumps(planned.input),
        )
        arn: str = response["executionArn"]
        return arn


def _running_arns(sfn: Any, machine_arns: Sequence[str]) -> set[str]:
    return {arn for machine in machine_arns for arn in running_executions(sfn, machine)}


async def _watch(
    aws: AwsEndpoint, flows: SeedFlows, launcher: Launcher, person: Person, progress: Progress
) -> None:
    """Poll until every started execution ended (or, planned to wait, had its link
    opened by the person) and nothing is left to start."""
    sfn = aws.client("stepfunctions")
    machines = list(flows.state_machines.values())
    began = time.monotonic()
    while True:
        # Read `done` before the ARNs: an execution started in between is then seen
        # in the next round rather than missed.
        done = launcher.done
        started = list(launcher.arns)
        running = await anyio.to_thread.run_sync(_running_arns, sfn, machines)
        waiting = {
            arn
            for planned, arn in zip(launcher.plan, started, strict=False)
            if planned.case is Case.VERIFY_WAITING
        }
        completed = sum(1 for arn in started if arn not in running and arn not in waiting)
        # A waiting one counts once its link has been opened: it will not end by itself.
        completed += min(len(waiting), person.waiting_opened())
        elapsed_s = time.monotonic() - began
        progress.show(Snapshot(len(launcher.plan), len(started), completed, elapsed_s))
        if done and completed == len(started):
            return
        await anyio.sleep(_POLL_INTERVAL_S)


async def exercise(
    aws: AwsEndpoint,
    flows: SeedFlows,
    broker: Broker,
    launcher: Launcher,
    person: Person,
    timeout_s: float,
) -> None:
    """Run the broker while the executions start and end and the person answers the
    approvals; stop them all at the end or timeout."""
    progress = Progress(sys.stderr)
    async with anyio.create_task_group() as tasks:
        await tasks.start(broker.run)
        tasks.start_soon(anyio.to_thread.run_sync, launcher.run)
        tasks.start_soon(anyio.to_thread.run_sync, person.run)
        try:
            with anyio.move_on_after(timeout_s) as deadline:
                await _watch(aws, flows, launcher, person, progress)
        finally:
            launcher.cancel()
            person.cancel()
            broker.request_stop()
    progress.finish()
    if deadline.cancelled_caught:
        print(f"timeout: {timeout_s:g} s passed; broker stopped", file=sys.stderr)


def judge_all(
    aws: AwsEndpoint, plan: Sequence[PlannedExecution], arns: Sequence[str]
) -> list[Judgement]:
    sfn = aws.client("stepfunctions")
    judgements = []
    # zip: executions never started (a timeout while starting) have no ARN.
    for planned, arn in zip(plan, arns, strict=False):
        result = describe_execution(sfn, arn)
        verdict, reason = judge(expected_for(planned), result)
        judgements.append(Judgement(planned, result, verdict, reason))
    return judgements


def messages_left(aws: AwsEndpoint, flows: SeedFlows) -> dict[str, int]:
    """Messages in every seed, dead-letter and inbox queue, visible or in flight, by name."""
    sqs = aws.client("sqs")
    urls = [*flows.queues.values(), *flows.dead_letter_queues.values()]
    if flows.inbox_url:
        urls.append(flows.inbox_url)
    left: dict[str, int] = {}
    for url in urls:
        attributes = sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        left[queue_name(url)] = sum(int(value) for value in attributes.values())
    return left
