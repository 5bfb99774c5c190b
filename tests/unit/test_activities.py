"""Activities on the fakes: polling under the global slot limit, routing, outcomes, heartbeats.

moto has no GetActivityTask, so everything an activity worker must get right is shown
here on ``FakeSfn``; tests/localstack runs the same flows against LocalStack.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest
from pydantic import BaseModel

from broker import ActivitySettings, ConfigError, ErrorName, Router, Task, TaskFailed
from broker.testing import FakeSfn, TestBroker, client_error
from handlers.seeds import router as seed_router

from .conftest import make_settings


def activity_settings(*activities: ActivitySettings, **overrides: Any) -> Any:
    return make_settings(queues=(), activities=activities, **overrides)


VERIFY = ActivitySettings(name="verify-activity", handler="verify", worker_name="unit-worker")


async def test_activity_seed_success_and_failure_inputs() -> None:
    sfn = FakeSfn(activity_poll_s=0.2)
    async with TestBroker(seed_router, activity_settings(VERIFY), sfn=sfn) as tb:
        ok = tb.start_activity_task({"in": "SUCCESS"})
        bad = tb.start_activity_task({"in": "RANDOM"})
        await tb.wait_idle()
    assert sfn.outcomes[ok].status == "success"
    assert sfn.outcomes[ok].output == {"result": {"in": "SUCCESS"}}
    assert sfn.outcomes[bad].status == "failure"
    assert sfn.outcomes[bad].error == "NO_SUCCESS_INPUT"
    assert sfn.outcomes[bad].cause == 'Input is not "SUCCESS"'
    activity = next(iter(sfn.activities.values()))
    assert set(activity.workers) == {"unit-worker"}


async def test_an_empty_poll_just_polls_again() -> None:
    sfn = FakeSfn(activity_poll_s=0.05)
    async with TestBroker(seed_router, activity_settings(VERIFY), sfn=sfn) as tb:
        # Each empty poll is followed by another: three answered empty and a fourth
        # open, waited for rather than slept on (a loaded machine polls later).
        with anyio.fail_after(30):
            while sfn.calls["get_activity_task"] < 4:
                await anyio.sleep(0.01)
        token = tb.start_activity_task({"in": "SUCCESS"})
        await tb.wait_idle()
    assert sfn.outcomes[token].status == "success"


async def test_a_slot_is_reserved_before_polling_so_no_poll_runs_while_all_slots_work() -> None:
    router = Router()
    release = anyio.Event()
    polls_open_while_working: list[int] = []
    sfn = FakeSfn(activity_poll_s=0.05)

    @router.handler("slow")
    async def slow(task: Task[Any]) -> str:
        polls_open_while_working.append(sfn._in_flight["get_activity_task"])
        await release.wait()
        return "done"

    settings = activity_settings(
        ActivitySettings(name="work", handler="slow", pollers=3), concurrency=1
    )
    async with TestBroker(router, settings, sfn=sfn) as tb:
        first = tb.start_activity_task({})
        second = tb.start_activity_task({})
        with anyio.fail_after(5):
            while not polls_open_while_working:
                await anyio.sleep(0.01)
        calls_while_busy = sfn.calls["get_activity_task"]
        await anyio.sleep(0.3)  # several poll periods: no poller may take the second task
        assert sfn.calls["get_activity_task"] == calls_while_busy
        assert sfn.waiting_activity_tasks() == 1
        release.set()
        await tb.wait_idle()
    assert polls_open_while_working == [0, 0]
    assert sfn.max_in_flight["get_activity_task"] == 1
    assert sfn.outcomes[first].output == sfn.outcomes[second].output == "done"


async def test_pollers_share_the_global_limit_with_the_queues() -> None:
    router = Router()
    release = anyio.Event()
    running = 0

    @router.handler("hold")
    async def hold(task: Task[Any]) -> None:
        nonlocal running
        running += 1
        await release.wait()

    sfn = FakeSfn(activity_poll_s=0.05)
    settings = make_settings(
        activities=(ActivitySettings(name="act", handler="hold", pollers=1),), concurrency=2
    )
    async with TestBroker(router, settings, sfn=sfn) as tb:
        await tb.start_task({}, message_type="hold")
        await tb.start_task({}, message_type="hold")
        with anyio.fail_after(5):
            while running < 2:
                await anyio.sleep(0.01)
        calls = sfn.calls["get_activity_task"]
        tb.start_activity_task({})
        await anyio.sleep(0.3)
        # Both slots are taken by SQS handlers: the activity is not even polled.
        assert sfn.calls["get_activity_task"] <= calls + 1
        assert sfn.waiting_activity_tasks() == 1
        release.set()
        await tb.wait_idle()
    assert running == 3


async def test_route_by_a_dotted_type_field_with_a_fallback_handler() -> None:
    sfn = FakeSfn(activity_poll_s=0.1)
    settings = activity_settings(
        ActivitySettings(name="tx", type_field="meta.kind", handler="callback")
    )
    async with TestBroker(seed_router, settings, sfn=sfn) as tb:
        purchase = tb.start_activity_task({"meta": {"kind": "purchase"}, "TransactionType": "P"})
        fallback = tb.start_activity_task({"TransactionType": "none"})
        unknown = tb.start_activity_task({"meta": {"kind": "nope"}, "TransactionType": "X"})
        await tb.wait_idle()
    assert sfn.outcomes[purchase].output["TransactionType"] == "P"
    assert sfn.outcomes[fallback].output == {"body": "Return from callback"}
    assert sfn.outcomes[unknown].error == ErrorName.UNKNOWN_MESSAGE_TYPE
    assert "'nope'" in (sfn.outcomes[unknown].cause or "")


class Order(BaseModel):
    quantity: int


async def test_input_failing_the_model_is_broker_invalid_input() -> None:
    router = Router()
    ran = False

    @router.handler("order")
    async def order(task: Task[Order]) -> int:
        nonlocal ran
        ran = True
        return task.payload.quantity

    sfn = FakeSfn(activity_poll_s=0.1)
    settings = activity_settings(ActivitySettings(name="orders", handler="order"))
    async with TestBroker(router, settings, sfn=sfn) as tb:
        bad = tb.start_activity_task({"quantity": "many"})
        good = tb.start_activity_task({"quantity": 3})
        await tb.wait_idle()
    assert sfn.outcomes[bad].error == ErrorName.INVALID_INPUT
    assert sfn.outcomes[good].output == 3
    assert ran


async def test_exceptions_and_timeouts_fail_at_once_without_redelivery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = Router()
    calls = 0

    class InventoryDown(Exception):
        pass

    @router.handler("boom")
    async def boom(task: Task[Any]) -> None:
        nonlocal calls
        calls += 1
        raise InventoryDown("inventory service unreachable")

    @router.handler("hang", timeout_s=0.1)
    async def hang(task: Task[Any]) -> None:
        await anyio.sleep(3600)

    @router.handler("decided")
    async def decided(task: Task[Any]) -> None:
        raise TaskFailed("OUT_OF_STOCK", "no more")

    sfn = FakeSfn(activity_poll_s=0.1)
    settings = activity_settings(ActivitySettings(name="jobs", type_field="kind"))
    with caplog.at_level(logging.DEBUG):
        async with TestBroker(router, settings, sfn=sfn) as tb:
            raised = tb.start_activity_task({"kind": "boom"})
            timed_out = tb.start_activity_task({"kind": "hang"})
            failed = tb.start_activity_task({"kind": "decided"})
            await tb.wait_idle()
    assert (sfn.outcomes[raised].error, sfn.outcomes[raised].cause) == (
        "InventoryDown",
        "inventory service unreachable",
    )
    assert calls == 1  # activities are never redelivered: one run, then failed
    assert sfn.outcomes[timed_out].error == ErrorName.HANDLER_TIMEOUT
    assert (sfn.outcomes[failed].error, sfn.outcomes[failed].cause) == ("OUT_OF_STOCK", "no more")
    for token in (raised, timed_out, failed):
        assert token not in caplog.text  # tokens are credentials


async def test_heartbeats_keep_a_slow_activity_alive() -> None:
    router = Router()

    @router.handler("slow", heartbeat_s=0.05)
    async def slow(task: Task[Any]) -> str:
        await anyio.sleep(0.4)
        await task.heartbeat()  # the handler's own heartbeat goes through the completer too
        return "slow but alive"

    sfn = FakeSfn(activity_poll_s=0.1)
    settings = activity_settings(ActivitySettings(name="slow", handler="slow"))
    async with TestBroker(router, settings, sfn=sfn) as tb:
        token = tb.start_activity_task({})
        await tb.wait_idle()
    assert sfn.outcomes[token].output == "slow but alive"
    assert sfn.heartbeats[token] >= 5


async def test_a_heartbeat_answered_closed_cancels_the_handler_and_completes_nothing() -> None:
    router = Router()
    started = anyio.Event()
    cancelled = False

    @router.handler("slow", heartbeat_s=0.05)
    async def slow(task: Task[Any]) -> str:
        nonlocal cancelled
        started.set()
        try:
            await anyio.sleep(3600)
        except anyio.get_cancelled_exc_class():
            cancelled = True
            raise
        return "unreachable"

    sfn = FakeSfn(activity_poll_s=0.1)
    settings = activity_settings(ActivitySettings(name="slow", handler="slow"))
    async with TestBroker(router, settings, sfn=sfn) as tb:
        token = tb.start_activity_task({})
        await started.wait()
        sfn.close(token)  # the workflow timed out
        await tb.wait_idle()
    assert cancelled
    assert sfn.outcomes[token].error == "States.Timeout"  # nothing sent after the close
    assert sfn.calls["send_task_success"] == sfn.calls["send_task_failure"] == 0


async def test_a_poll_error_backs_off_and_polling_resumes() -> None:
    sfn = FakeSfn(activity_poll_s=0.1)
    sfn.fail_next("get_activity_task", client_error("ThrottlingException", status=400))
    async with TestBroker(seed_router, activity_settings(VERIFY), sfn=sfn) as tb:
        token = tb.start_activity_task({"in": "SUCCESS"})
        await tb.wait_idle()
    assert sfn.outcomes[token].status == "success"
    assert sfn.calls["get_activity_task"] >= 2


# ------------------------------------------------------------------------------ drain


async def test_stop_starts_no_poll_and_lets_the_open_poll_return() -> None:
    sfn = FakeSfn(activity_poll_s=0.5)
    settings = activity_settings(
        ActivitySettings(name="verify-activity", handler="verify", pollers=2), shutdown_grace_s=5
    )
    async with TestBroker(seed_router, settings, sfn=sfn):
        with anyio.fail_after(5):
            while sfn._in_flight["get_activity_task"] < 2:
                await anyio.sleep(0.01)
        calls_at_stop = sfn.calls["get_activity_task"]
        stop_requested_at = anyio.current_time()
    stopped_in_s = anyio.current_time() - stop_requested_at
    assert sfn.calls["get_activity_task"] == calls_at_stop  # no poll after the stop
    assert sfn._in_flight["get_activity_task"] == 0  # the open ones returned
    assert stopped_in_s < 0.5 + 1  # one poll period, not the grace period


async def test_a_task_arriving_during_the_drain_runs_within_the_grace_period() -> None:
    sfn = FakeSfn(activity_poll_s=2)
    settings = activity_settings(VERIFY, shutdown_grace_s=5)
    tb = TestBroker(seed_router, settings, sfn=sfn)
    async with tb:
        with anyio.fail_after(5):
            while not sfn._in_flight["get_activity_task"]:
                await anyio.sleep(0.01)
        tb.broker.request_stop()
        await anyio.sleep(0.1)
        token = tb.start_activity_task({"in": "SUCCESS"})  # picked up by the open poll
    assert sfn.outcomes[token].output == {"result": {"in": "SUCCESS"}}
    assert sfn.calls["get_activity_task"] == 1


async def test_a_handler_cut_off_by_the_grace_period_fails_with_shutting_down() -> None:
    router = Router()
    started = anyio.Event()

    @router.handler("stuck")
    async def stuck(task: Task[Any]) -> None:
        started.set()
        await anyio.sleep(3600)

    sfn = FakeSfn(activity_poll_s=0.1)
    settings = activity_settings(
        ActivitySettings(name="stuck", handler="stuck"), shutdown_grace_s=0.3
    )
    async with TestBroker(router, settings, sfn=sfn) as tb:
        token = tb.start_activity_task({})
        await started.wait()
        stop_requested_at = anyio.current_time()
    stopped_in_s = anyio.current_time() - stop_requested_at
    assert sfn.outcomes[token].error == ErrorName.SHUTTING_DOWN == "Broker.ShuttingDown"
    assert stopped_in_s < 0.3 + 2


class _LateAnswer(FakeSfn):
    """A poll whose answer was already on its way when the grace period ended."""

    def __init__(self, stop: anyio.Event) -> None:
        super().__init__(activity_poll_s=0.1)
        self._stop = stop

    async def get_activity_task(  # type: ignore[return]  # CancelScope may swallow: it won't
        self, *, activityArn: str, workerName: str | None = None
    ) -> dict[str, Any]:
        await self._stop.wait()
        with anyio.CancelScope(shield=True):
            await anyio.sleep(0.1)
            self.schedule_activity_task(activityArn, {"late": True})
            return await super().get_activity_task(activityArn=activityArn, workerName=workerName)


async def test_a_task_handed_out_after_the_grace_period_is_failed_at_once_not_dropped() -> None:
    router = Router()
    ran = False

    @router.handler("late")
    async def late(task: Task[Any]) -> None:
        nonlocal ran
        ran = True

    stop = anyio.Event()
    sfn = _LateAnswer(stop)
    settings = activity_settings(ActivitySettings(name="late", handler="late"), shutdown_grace_s=0)
    async with TestBroker(router, settings, sfn=sfn) as tb:
        await anyio.sleep(0.05)
        tb.broker.request_stop()
        stop.set()
    (token,) = sfn.handed_out
    assert not ran
    assert sfn.outcomes[token].error == ErrorName.SHUTTING_DOWN


# ----------------------------------------------------------------------------- config


def test_an_activity_without_handler_or_type_field_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from broker import load_settings

    monkeypatch.setenv("BROKER_ACTIVITIES", '[{"name": "orphan"}]')
    with pytest.raises(ConfigError, match="BROKER_ACTIVITIES") as raised:
        load_settings()
    assert "'orphan' needs a handler or a type_field" in str(raised.value)


def test_pollers_may_not_hold_every_slot_the_queues_need() -> None:
    with pytest.raises(ValueError, match="BROKER_CONCURRENCY"):
        make_settings(
            activities=(ActivitySettings(name="a", handler="x", pollers=4),), concurrency=4
        )


def test_an_unregistered_handler_fails_at_start_up() -> None:
    settings = activity_settings(ActivitySettings(name="a", handler="not-there"))
    with pytest.raises(ConfigError, match="'not-there' is not registered"):
        TestBroker(seed_router, settings)


async def _start_and_stop(tb: TestBroker) -> None:
    async with tb:
        pass


async def test_a_missing_activity_fails_start_up_unless_create_if_missing() -> None:
    from broker import ActivityNotFound

    sfn = FakeSfn(activity_poll_s=0.1)
    absent = TestBroker(
        seed_router, activity_settings(ActivitySettings(name="absent", handler="verify")), sfn=sfn
    )
    sfn.activities.clear()  # TestBroker creates the configured activities; undo that
    with pytest.raises(ActivityNotFound, match="create_if_missing"):
        await _start_and_stop(absent)

    arn = "arn:aws:states:us-east-1:000000000000:activity:gone"
    gone = TestBroker(
        seed_router, activity_settings(ActivitySettings(name=arn, handler="verify")), sfn=sfn
    )
    with pytest.raises(ActivityNotFound, match="gone"):
        await _start_and_stop(gone)

    created = ActivitySettings(name="fresh", handler="verify", create_if_missing=True)
    async with TestBroker(seed_router, activity_settings(created), sfn=sfn) as tb:
        token = tb.start_activity_task({"in": "SUCCESS"})
        await tb.wait_idle()
    assert sfn.calls["create_activity"] == 1
    assert sfn.outcomes[token].status == "success"
