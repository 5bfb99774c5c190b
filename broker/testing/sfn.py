"""Step Functions' task-token and activity API in memory (``FakeSfn``, ``TaskOutcome``)."""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import orjson

from broker.testing._faults import Faults, client_error

__all__ = ["FakeSfn", "TaskOutcome"]

_MAX_OUTPUT_BYTES = 262_144


@dataclass
class TaskOutcome:
    """What a fake task was completed with (the first completion wins, as in AWS)."""

    status: Literal["success", "failure"]
    output: Any = None
    error: str | None = None
    cause: str | None = None


@dataclass
class _Activity:
    name: str
    arn: str
    #: Tasks scheduled and not yet handed out: (token, input JSON).
    waiting: list[tuple[str, str]] = field(default_factory=list)
    #: workerName of each GetActivityTask call, in call order.
    workers: list[str | None] = field(default_factory=list)


class FakeSfn(Faults):
    """Step Functions' task-token and activity API, with AWS's validation and closed-task
    answers.  ``GetActivityTask`` long-polls for ``activity_poll_s`` (AWS: 60 s)."""

    def __init__(
        self,
        *,
        region: str = "us-east-1",
        account: str = "000000000000",
        activity_poll_s: float = 1.0,
    ) -> None:
        super().__init__()
        self.outcomes: dict[str, TaskOutcome] = {}
        self.heartbeats: Counter[str] = Counter()
        #: Completions answered TaskTimedOut because the task was already closed.
        self.duplicates = 0
        #: Calls answered InvalidToken: a token this fake never handed out.
        self.unknown_tokens = 0
        self._issued: set[str] = set()
        self.activities: dict[str, _Activity] = {}
        self.activity_poll_s = activity_poll_s
        #: Tokens handed out by GetActivityTask, in order.
        self.handed_out: list[str] = []
        self._arn_prefix = f"arn:aws:states:{region}:{account}:activity:"
        self._tokens = itertools.count(1)

    # -- activities: set-up helpers (synchronous, not part of the API)
    def add_activity(self, name: str) -> str:
        arn = self._arn_prefix + name
        self.activities.setdefault(arn, _Activity(name, arn))
        return arn

    def schedule_activity_task(self, activity: str, input: Any) -> str:
        """Schedule a task on ``activity`` (name or ARN) as a state machine would."""
        token = self.new_token()
        self._activity(activity).waiting.append((token, orjson.dumps(input).decode()))
        return token

    def waiting_activity_tasks(self) -> int:
        return sum(len(activity.waiting) for activity in self.activities.values())

    def _activity(self, name_or_arn: str) -> _Activity:
        arn = name_or_arn if name_or_arn.startswith("arn:") else self._arn_prefix + name_or_arn
        try:
            return self.activities[arn]
        except KeyError:
            raise client_error("ActivityDoesNotExist", f"Activity does not exist: {arn}") from None

    # -- activities: the API
    async def create_activity(self, *, name: str, **_: Any) -> dict[str, Any]:
        async with self._call("create_activity"):
            # Idempotent, as on AWS: the same name answers the same ARN.
            return {"activityArn": self.add_activity(name)}

    async def describe_activity(self, *, activityArn: str) -> dict[str, Any]:
        async with self._call("describe_activity"):
            activity = self._activity(activityArn)
            return {"activityArn": activity.arn, "name": activity.name}

    async def list_activities(self, *, nextToken: str | None = None, **_: Any) -> dict[str, Any]:
        async with self._call("list_activities"):
            return {
                "activities": [
                    {"activityArn": a.arn, "name": a.name} for a in self.activities.values()
                ]
            }

    async def get_activity_task(
        self, *, activityArn: str, workerName: str | None = None
    ) -> dict[str, Any]:
        async with self._call("get_activity_task"):
            activity = self._activity(activityArn)
            activity.workers.append(workerName)
            deadline = anyio.current_time() + self.activity_poll_s
            while True:
                now = anyio.current_time()
                if activity.waiting or now >= deadline:
                    break
                await anyio.sleep(min(0.005, deadline - now))
            if not activity.waiting:
                return {}  # AWS: no taskToken when no task came within the poll
            token, input_json = activity.waiting.pop(0)
            self.handed_out.append(token)
            return {"taskToken": token, "input": input_json}

    def new_token(self, token: str | None = None) -> str:
        """A token for a task that is open until its first success or failure.

        ``token`` chooses it (a short one, say, like the emulators' UUIDs); any other
        token is answered ``InvalidToken``, as Step Functions answers a token it never
        handed out.
        """
        # Long and opaque like the real thing, so leak checks have something to find.
        token = token or f"AQB{next(self._tokens):08d}" + uuid.uuid4().hex * 8
        self._issued.add(token)
        return token

    def close(self, token: str) -> None:
        """Mark a task closed (timed out) so later calls answer TaskTimedOut."""
        self.outcomes[token] = TaskOutcome("failure", error="States.Timeout")

    async def send_task_success(self, *, taskToken: str, output: str) -> dict[str, Any]:
        async with self._call("send_task_success"):
            self._check_open(taskToken)
            if len(output.encode("utf-8")) > _MAX_OUTPUT_BYTES:
                raise client_error("ValidationException", "output too long")
            try:
                parsed = orjson.loads(output)
            except orjson.JSONDecodeError:
                raise client_error("InvalidOutput", "output is not valid JSON") from None
            self.outcomes[taskToken] = TaskOutcome("success", output=parsed)
            return {}

    async def send_task_failure(
        self,
        *,
        taskToken: str,
        error: str = "",
        cause: str = "",
    ) -> dict[str, Any]:
        async with self._call("send_task_failure"):
            self._check_open(taskToken)
            if len(error) > 256 or len(cause) > 32_768:
                raise client_error("ValidationException", "error or cause too long")
            self.outcomes[taskToken] = TaskOutcome("failure", error=error, cause=cause)
            return {}

    async def send_task_heartbeat(self, *, taskToken: str) -> dict[str, Any]:
        async with self._call("send_task_heartbeat"):
            self._check_open(taskToken)
            self.heartbeats[taskToken] += 1
            return {}

    def _check_open(self, token: str) -> None:
        if not 1 <= len(token) <= 2048:
            raise client_error("ValidationException", "taskToken length")
        if token in self.outcomes:
            self.duplicates += 1
            raise client_error("TaskTimedOut", "Task Timed Out")
        if token not in self._issued:
            # As Step Functions (and moto, LocalStack, the stub): a token never handed out.
            self.unknown_tokens += 1
            raise client_error("InvalidToken", "Invalid Token")
