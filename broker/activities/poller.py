"""Step Functions activities: the GetActivityTask poll loop, beside the SQS ``QueueConsumer``.

A poller reserves one slot of the broker-wide ``CapacityLimiter`` *before* it calls
GetActivityTask, so a task is only ever taken when a handler can start at once: a token
handed out is handed out once, and a task held without a worker would just age toward
its timeout.  An empty poll (no ``taskToken``) gives the slot back and polls again.

Drain (``stop``): no poll starts any more; a poll in flight is left to return, because
cancelling it could swallow a task Step Functions already handed out.  What it returns
runs under the grace period (see ``activities.processor``); the broker cancels polls still
open at the grace deadline.
"""

from __future__ import annotations

import functools
import logging
import socket
from collections.abc import Mapping
from typing import Any, Final

import anyio
from anyio.abc import TaskGroup

from broker.activities.processor import ActivityRuntime, ActivityTaskProcessor
from broker.aws.protocols import SfnApi
from broker.aws.startup import StartupRetry
from broker.core.errors import ActivityNotFound, ConfigError
from broker.core.router import Router
from broker.core.settings import ENV_PREFIX, ActivitySettings
from broker.core.slots import PollBackoff, Slot
from broker.observability.stats import Stats

__all__ = [
    "ActivityPoller",
    "activity_route_problems",
    "check_activity_routes",
    "lookup_activity",
    "resolve_activity",
]

log = logging.getLogger("broker.activities")

_WORKER_NAME_MAX: Final = 80


def activity_route_problems(
    activities: tuple[ActivitySettings, ...], router: Router
) -> list[ConfigError]:
    """Every configured activity handler that is not registered (``check`` lists them all)."""
    problems = []
    for activity in activities:
        if activity.handler is not None and activity.handler not in router:
            known = ", ".join(sorted(router.routes)) or "none"
            problems.append(
                ConfigError(
                    f"{ENV_PREFIX}ACTIVITIES: activity {activity.name!r}: handler "
                    f"{activity.handler!r} is not registered (registered types: {known})"
                )
            )
    return problems


def check_activity_routes(activities: tuple[ActivitySettings, ...], router: Router) -> None:
    """Fail at start-up, not at the first task, when a configured handler is missing."""
    problems = activity_route_problems(activities, router)
    if problems:
        raise problems[0]


async def resolve_activity(
    sfn: SfnApi, settings: ActivitySettings, *, retry: StartupRetry | None = None
) -> ActivityRuntime:
    """The activity's ARN, creating the activity if asked.  ``ActivityNotFound`` otherwise.

    Every call retries transient errors under ``retry`` (the start-up deadline); other
    failures raise a one-line ``StartupError`` (``describe_aws_error``).
    """
    retry = retry or StartupRetry()
    worker_name = settings.worker_name or socket.gethostname()[:_WORKER_NAME_MAX] or "broker"
    if settings.create_if_missing and not settings.name.startswith("arn:"):
        # CreateActivity is idempotent: an existing activity answers its ARN.
        created = await retry.call(
            lambda: sfn.create_activity(name=settings.name),
            subject=f"activity {settings.name!r}",
            api="CreateActivity",
            client=sfn,
            not_found=ActivityNotFound,
        )
        return ActivityRuntime(settings, str(created["activityArn"]), worker_name)
    arn = await lookup_activity(sfn, settings, retry=retry)
    if not arn:
        raise ActivityNotFound(
            f"activity {settings.name!r} not found (set create_if_missing in "
            f"{ENV_PREFIX}ACTIVITIES to create it at start-up)"
        )
    return ActivityRuntime(settings, arn, worker_name)


async def lookup_activity(sfn: SfnApi, settings: ActivitySettings, *, retry: StartupRetry) -> str:
    """The activity's ARN, or "" if no activity has that name.  Creates nothing.

    An ARN is checked with DescribeActivity (its absence raises ``ActivityNotFound``);
    a name is looked up with ListActivities.
    """
    subject = f"activity {settings.name!r}"
    if settings.name.startswith("arn:"):
        await retry.call(
            lambda: sfn.describe_activity(activityArn=settings.name),
            subject=subject,
            api="DescribeActivity",
            client=sfn,
            not_found=ActivityNotFound,
        )
        return settings.name
    params: dict[str, Any] = {}
    while True:
        page: Mapping[str, Any] = await retry.call(
            functools.partial(sfn.list_activities, **params),
            subject=subject,
            api="ListActivities",
            client=sfn,
            not_found=ActivityNotFound,
        )
        for activity in page.get("activities", []):
            if activity.get("name") == settings.name:
                return str(activity["activityArn"])
        if not page.get("nextToken"):
            return ""
        params = {"nextToken": page["nextToken"]}


class ActivityPoller:
    """One GetActivityTask loop of one activity.  ``pollers`` of them run per activity."""

    def __init__(
        self,
        activity: ActivityRuntime,
        sfn: SfnApi,
        processor: ActivityTaskProcessor,
        *,
        total_slots: anyio.CapacityLimiter,
        stats: Stats,
    ) -> None:
        self.activity = activity
        self._sfn = sfn
        self._processor = processor
        self._total_slots = total_slots
        self._stats = stats
        self._processing = 0
        self._stopping = False
        self._polling = False
        self._scope: anyio.CancelScope | None = None
        #: Polls cut off by the end of the grace period (idle: they had no answer yet),
        #: and handlers cancelled by it: the broker says both once, at the end.
        self.polls_cut = 0
        self.cut_off = 0
        self._backoff = PollBackoff("GetActivityTask", activity.name, log)

    @property
    def in_flight(self) -> int:
        """Tasks received and not yet settled."""
        return self._processing

    @property
    def polling(self) -> bool:
        """A GetActivityTask call is open."""
        return self._polling

    def stop(self) -> None:
        """Start no more polls.  A poll in flight is left to return; waiting stops now."""
        self._stopping = True
        if self._scope is not None and not self._polling:
            self._scope.cancel()

    async def run(self, work: TaskGroup) -> None:
        """Poll until ``stop``, starting each task received as a task in ``work``."""
        with anyio.CancelScope() as self._scope:
            while not self._stopping:
                slot = Slot()
                await self._total_slots.acquire_on_behalf_of(slot)
                try:
                    response = await self._poll()
                except Exception as exc:  # noqa: BLE001 - a poll error must not stop the broker
                    self._total_slots.release_on_behalf_of(slot)
                    delay_s = self._backoff.failed(exc)
                    if not self._stopping:
                        await anyio.sleep(delay_s)
                    continue
                except BaseException:
                    self._total_slots.release_on_behalf_of(slot)
                    raise
                self._backoff.succeeded()
                token = response.get("taskToken")
                if not token:
                    # The minute passed without a task: poll again.
                    self._total_slots.release_on_behalf_of(slot)
                    continue
                self._stats.received[self.activity.name] += 1
                self._processing += 1
                work.start_soon(self._handle, token, response.get("input"), slot)

    async def _poll(self) -> Mapping[str, Any]:
        # While the call is open, ``stop`` must not cancel it: see the module docstring.
        self._polling = True
        try:
            return await self._sfn.get_activity_task(
                activityArn=self.activity.arn, workerName=self.activity.worker_name
            )
        except anyio.get_cancelled_exc_class():
            if self._stopping:
                self.polls_cut += 1  # the broker says so, once for every poller
            raise
        finally:
            self._polling = False

    async def _handle(self, token: str, raw_input: str | None, slot: Slot) -> None:
        try:
            await self._processor.process(self.activity, token, raw_input)
        except anyio.get_cancelled_exc_class():
            self.cut_off += 1  # the processor failed it with Broker.ShuttingDown
            raise
        except Exception as exc:  # noqa: BLE001 - failed as Broker.InternalError
            # Raised inside the broker, not by the handler: nothing redelivers an
            # activity task, so it is failed now (Broker.InternalError) rather than
            # left to the workflow's heartbeat/timeout.
            await self._processor.internal_error(self.activity, token, exc)
        finally:
            self._processing -= 1
            self._total_slots.release_on_behalf_of(slot)
