"""The outcome table of the design brief, one test per row, on the in-memory fakes."""

from __future__ import annotations

from typing import Any

import anyio
import orjson
import pytest
from pydantic import BaseModel

from broker import NonRetryable, Outcome, QueueSettings, RetryLater, Router, Task, TaskFailed
from broker.testing import FakeSfn, FakeSqs, TestBroker, client_error

from .conftest import make_settings


class Order(BaseModel):
    id: int


def outcomes(tb: TestBroker) -> dict[Outcome, int]:
    return {o: tb.broker.stats.total(o) for o in Outcome if tb.broker.stats.total(o)}


def router_with(**handlers: Any) -> Router:
    router = Router()
    for name, func in handlers.items():
        router.add(name, func)
    return router


async def test_returned_value_is_sent_as_success_then_deleted() -> None:
    async def ok(task: Task[Any]) -> dict[str, Any]:
        return {"echo": task.payload, "type": task.message_type}

    async with TestBroker(router_with(ok=ok)) as tb:
        token = await tb.start_task({"n": 1}, message_type="ok")
        await tb.wait_idle()
    assert tb.sfn.outcomes[token].output == {"echo": {"n": 1}, "type": "ok"}
    assert tb.sqs.count("tasks") == 0
    assert outcomes(tb) == {Outcome.SUCCEEDED: 1}


async def test_pydantic_model_output_is_serialized() -> None:
    async def model(task: Task[Order]) -> Order:
        return Order(id=task.payload.id + 1)

    async with TestBroker(router_with(model=model)) as tb:
        token = await tb.start_task({"id": "41"}, message_type="model")
        await tb.wait_idle()
    assert tb.sfn.outcomes[token].output == {"id": 42}


async def test_task_failed_is_sent_as_failure_then_deleted() -> None:
    async def no(task: Task[Any]) -> None:
        raise TaskFailed("Order.Rejected", "out of stock")

    async with TestBroker(router_with(no=no)) as tb:
        token = await tb.start_task({}, message_type="no")
        await tb.wait_idle()
    outcome = tb.sfn.outcomes[token]
    assert (outcome.status, outcome.error, outcome.cause) == (
        "failure",
        "Order.Rejected",
        "out of stock",
    )
    assert tb.sqs.count("tasks") == 0


async def test_payload_failing_the_model_is_invalid_input_with_the_errors() -> None:
    called = False

    async def typed(task: Task[Order]) -> None:
        nonlocal called
        called = True

    async with TestBroker(router_with(typed=typed)) as tb:
        token = await tb.start_task({"id": "not a number"}, message_type="typed")
        await tb.wait_idle()
    outcome = tb.sfn.outcomes[token]
    assert outcome.error == "Broker.InvalidInput"
    assert orjson.loads(outcome.cause or "")[0]["loc"] == ["id"]
    assert not called
    assert tb.sqs.count("tasks") == 0


async def test_unknown_type_fails_the_task_and_copies_to_the_dlq() -> None:
    settings = make_settings(QueueSettings(name="tasks", wait_time_s=1, dead_letter_queue="dlq"))

    async def known(task: Task[Any]) -> None: ...

    async with TestBroker(router_with(known=known), settings) as tb:
        token = await tb.start_task({}, message_type="mystery", attributes={"trace": "abc"})
        await tb.wait_idle()
    assert tb.sfn.outcomes[token].error == "Broker.UnknownMessageType"
    assert "'mystery'" in (tb.sfn.outcomes[token].cause or "")
    assert tb.sqs.count("tasks") == 0
    [copy] = tb.sqs.messages("dlq")
    assert orjson.loads(copy.body)["TaskToken"] == token
    assert copy.attributes["broker.reason"]["StringValue"] == "UnknownMessageType"
    assert copy.attributes["broker.source_queue"]["StringValue"] == "tasks"
    assert copy.attributes["broker.receive_count"]["StringValue"] == "1"
    assert copy.attributes["trace"]["StringValue"] == "abc"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("{not json", "InvalidJson"),
        ("[1,2,3]", "NotAnObject"),
        ('{"input": {}}', "MissingToken"),
        ('{"TaskToken": ""}', "InvalidToken"),
    ],
)
async def test_poison_goes_to_the_dlq_with_its_reason(body: str, reason: str) -> None:
    settings = make_settings(QueueSettings(name="tasks", wait_time_s=1, dead_letter_queue="dlq"))
    async with TestBroker(Router(), settings) as tb:
        tb.sqs.put("tasks", body)
        await tb.wait_idle()
    [copy] = tb.sqs.messages("dlq")
    assert copy.body == body
    assert copy.attributes["broker.reason"]["StringValue"] == reason
    assert tb.sqs.count("tasks") == 0
    assert tb.sfn.calls.total() == 0
    assert outcomes(tb) == {Outcome.POISON: 1}


async def test_poison_without_dlq_is_left_for_the_redrive_policy() -> None:
    async with TestBroker(Router()) as tb:
        tb.sqs.put("tasks", "garbage")
        await tb.wait_idle()
    # Still in the queue, hidden so it does not spin, for the queue's redrive policy.
    assert tb.sqs.count("tasks") == 1
    assert tb.sqs.calls["change_message_visibility"] == 1


async def test_transient_handler_error_is_retried_then_succeeds() -> None:
    attempts: list[int] = []

    async def flaky(task: Task[Any]) -> str:
        attempts.append(task.receive_count)
        if len(attempts) < 3:
            raise ConnectionError("database unavailable")
        return "done"

    async with TestBroker(router_with(flaky=flaky), make_settings()) as tb:
        token = await tb.start_task({}, message_type="flaky")
        await tb.wait_idle()
    assert attempts == [1, 2, 3]
    assert tb.sfn.outcomes[token].output == "done"
    assert outcomes(tb) == {Outcome.RETRY: 2, Outcome.SUCCEEDED: 1}
    assert tb.sqs.count("tasks") == 0


async def test_exhausted_attempts_fail_with_the_exception_name_and_dead_letter() -> None:
    settings = make_settings(
        QueueSettings(name="tasks", wait_time_s=1, dead_letter_queue="dlq"), max_attempts=3
    )

    async def broken(task: Task[Any]) -> None:
        raise KeyError("customer 17")

    async with TestBroker(router_with(broken=broken), settings) as tb:
        token = await tb.start_task({}, message_type="broken")
        await tb.wait_idle()
    outcome = tb.sfn.outcomes[token]
    assert (outcome.error, outcome.cause) == ("KeyError", "'customer 17'")
    assert outcomes(tb) == {Outcome.RETRY: 2, Outcome.EXHAUSTED: 1}
    [copy] = tb.sqs.messages("dlq")
    assert copy.attributes["broker.reason"]["StringValue"] == "AttemptsExhausted"
    assert copy.attributes["broker.receive_count"]["StringValue"] == "3"
    assert tb.sqs.count("tasks") == 0


async def test_a_throttled_dead_letter_copy_is_retried() -> None:
    settings = make_settings(
        QueueSettings(name="tasks", wait_time_s=1, dead_letter_queue="dlq"), max_attempts=1
    )

    async def broken(task: Task[Any]) -> None:
        raise KeyError("customer 17")

    sqs = FakeSqs()
    sqs.fail_next("send_message", client_error("ThrottlingException"), times=2)
    async with TestBroker(router_with(broken=broken), settings, sqs=sqs) as tb:
        await tb.start_task({}, message_type="broken")
        await tb.wait_idle()
    [copy] = tb.sqs.messages("dlq")
    assert copy.attributes["broker.reason"]["StringValue"] == "AttemptsExhausted"
    assert tb.sqs.count("tasks") == 0


async def test_an_exhausted_message_is_kept_until_its_dead_letter_copy_is_made() -> None:
    settings = make_settings(
        QueueSettings(name="tasks", wait_time_s=1, dead_letter_queue="dlq"), max_attempts=1
    )
    runs = 0

    async def broken(task: Task[Any]) -> None:
        nonlocal runs
        runs += 1
        raise KeyError("customer 17")

    sqs = FakeSqs()
    sqs.create_queue("tasks", visibility_timeout_s=1)
    sqs.fail_next("send_message", client_error("AccessDenied"))
    async with TestBroker(router_with(broken=broken), settings, sqs=sqs) as tb:
        token = await tb.start_task({}, message_type="broken")
        with anyio.fail_after(10):
            while tb.sqs.count("dlq") == 0:
                await anyio.sleep(0.05)
        await tb.wait_idle()
    # Failed at once; the copy failed, so the message came back and the copy was made then.
    assert tb.sfn.outcomes[token].error == "KeyError"
    assert runs == 2
    [copy] = tb.sqs.messages("dlq")
    assert copy.attributes["broker.receive_count"]["StringValue"] == "2"
    assert tb.sqs.count("tasks") == 0


async def test_non_retryable_exception_fails_at_once() -> None:
    class BadRequest(NonRetryable, ValueError):
        pass

    async def strict(task: Task[Any]) -> None:
        raise BadRequest("no such account")

    async with TestBroker(router_with(strict=strict)) as tb:
        token = await tb.start_task({}, message_type="strict")
        await tb.wait_idle()
    assert tb.sfn.outcomes[token].error == "BadRequest"
    assert outcomes(tb) == {Outcome.EXHAUSTED: 1}


async def test_handler_timeout_cancels_the_work_and_counts_as_an_attempt() -> None:
    router = Router()
    cancelled = 0

    @router.handler("slow", timeout_s=0.05, max_attempts=2)
    async def slow(task: Task[Any]) -> None:
        nonlocal cancelled
        try:
            await anyio.sleep(10)
        except anyio.get_cancelled_exc_class():
            cancelled += 1
            raise

    async with TestBroker(router, make_settings()) as tb:
        token = await tb.start_task({}, message_type="slow")
        await tb.wait_idle()
    assert cancelled == 2
    assert tb.sfn.outcomes[token].error == "Broker.HandlerTimeout"


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (object(), "Broker.InvalidOutput"),
        ({1, 2}, "Broker.InvalidOutput"),
        ("x" * 300_000, "Broker.OutputTooLarge"),
    ],
)
async def test_output_that_cannot_be_sent_fails_the_task(value: Any, error: str) -> None:
    async def bad(task: Task[Any]) -> Any:
        return value

    async with TestBroker(router_with(bad=bad)) as tb:
        token = await tb.start_task({}, message_type="bad")
        await tb.wait_idle()
    assert tb.sfn.outcomes[token].error == error
    assert outcomes(tb) == {Outcome.INVALID_OUTPUT: 1}


async def test_invalid_output_answer_from_step_functions_becomes_a_failure() -> None:
    sfn = FakeSfn()
    sfn.fail_next("send_task_success", client_error("InvalidOutput"))

    async def ok(task: Task[Any]) -> int:
        return 1

    async with TestBroker(router_with(ok=ok), sfn=sfn) as tb:
        token = await tb.start_task({}, message_type="ok")
        await tb.wait_idle()
    assert tb.sfn.outcomes[token].error == "Broker.InvalidOutput"


async def test_long_error_and_cause_are_truncated_before_sending() -> None:
    async def verbose(task: Task[Any]) -> None:
        raise TaskFailed("E" * 1000, "c" * 100_000)

    async with TestBroker(router_with(verbose=verbose)) as tb:
        token = await tb.start_task({}, message_type="verbose")
        await tb.wait_idle()
    outcome = tb.sfn.outcomes[token]
    assert outcome.error is not None
    assert len(outcome.error) == 256
    assert outcome.cause is not None
    assert len(outcome.cause) == 32_768
    assert outcome.cause.endswith("[truncated]")


@pytest.mark.parametrize("code", ["TaskTimedOut", "InvalidToken", "TaskDoesNotExist"])
async def test_closed_task_answer_deletes_and_counts(code: str) -> None:
    sfn = FakeSfn()
    sfn.fail_next("send_task_success", client_error(code))

    async def ok(task: Task[Any]) -> int:
        return 1

    async with TestBroker(router_with(ok=ok), sfn=sfn) as tb:
        await tb.start_task({}, message_type="ok")
        await tb.wait_idle()
    assert tb.sqs.count("tasks") == 0
    assert outcomes(tb) == {Outcome.TASK_CLOSED: 1}


async def test_duplicate_delivery_of_a_completed_task_is_task_closed() -> None:
    async def ok(task: Task[Any]) -> int:
        return 1

    async with TestBroker(router_with(ok=ok)) as tb:
        token = await tb.start_task({}, message_type="ok")
        await tb.wait_idle()
        # The same token again, as a standard queue may deliver it twice, to a replica
        # that does not remember settling it (sqs.memory is per process).
        tb.broker.consumers[0]._processor.memory.clear()
        tb.sqs.put("tasks", orjson.dumps({"TaskToken": token, "input": {}}), {"type": "ok"})
        await tb.wait_idle()
    assert tb.sfn.duplicates == 1
    assert outcomes(tb) == {Outcome.SUCCEEDED: 1, Outcome.TASK_CLOSED: 1}
    assert tb.sqs.count("tasks") == 0


async def test_throttling_and_5xx_are_retried_until_confirmed() -> None:
    sfn = FakeSfn()
    sfn.fail_next("send_task_success", client_error("ThrottlingException"), times=2)
    sfn.fail_next("send_task_success", client_error("ServiceUnavailable", status=503))
    sfn.fail_next("send_task_success", ConnectionResetError("peer reset"))

    async def ok(task: Task[Any]) -> int:
        return 1

    async with TestBroker(router_with(ok=ok), sfn=sfn) as tb:
        token = await tb.start_task({}, message_type="ok")
        await tb.wait_idle()
    assert tb.sfn.outcomes[token].output == 1
    assert sfn.calls["send_task_success"] == 5
    assert tb.sqs.count("tasks") == 0


async def test_message_is_kept_when_step_functions_never_confirms() -> None:
    sfn = FakeSfn()
    sfn.fail_next("send_task_success", client_error("ThrottlingException"), times=100)
    settings = make_settings(completion_max_attempts=3)

    async def ok(task: Task[Any]) -> int:
        return 1

    async with TestBroker(router_with(ok=ok), settings, sfn=sfn) as tb:
        await tb.start_task({}, message_type="ok")
        await tb.wait_idle()
    assert sfn.calls["send_task_success"] == 3
    assert tb.sqs.count("tasks") == 1  # not deleted: it comes back after its visibility
    assert tb.sqs.visible("tasks") == 0
    assert outcomes(tb) == {Outcome.UNCONFIRMED: 1}


async def test_delete_failures_are_read_per_entry() -> None:
    sqs = FakeSqs()

    async def ok(task: Task[Any]) -> int:
        # Simulate a redelivery racing the delete: the handle goes stale.
        for stored in sqs.messages("tasks"):
            stored.receipt_handle = "stale"
        return 1

    async with TestBroker(router_with(ok=ok), sqs=sqs) as tb:
        await tb.start_task({}, message_type="ok")
        await tb.wait_idle()
    deleter = tb.broker.consumers[0].queue.deleter
    assert (deleter.deleted, deleter.failed) == (0, 1)


async def test_handler_heartbeat_reaches_step_functions() -> None:
    async def beating(task: Task[Any]) -> int:
        await task.heartbeat()
        await task.heartbeat()
        return 1

    async with TestBroker(router_with(beating=beating)) as tb:
        token = await tb.start_task({}, message_type="beating")
        await tb.wait_idle()
    assert tb.sfn.heartbeats[token] == 2


async def test_default_handler_routes_untyped_messages() -> None:
    settings = make_settings(QueueSettings(name="tasks", wait_time_s=1, default_handler="only"))

    async def only(task: Task[Any]) -> str:
        return task.message_type

    async with TestBroker(router_with(only=only), settings) as tb:
        token = await tb.start_task({"no": "type"})
        await tb.wait_idle()
    assert tb.sfn.outcomes[token].output == "only"


async def test_broker_keeps_running_after_every_kind_of_bad_input() -> None:
    settings = make_settings(QueueSettings(name="tasks", wait_time_s=1, dead_letter_queue="dlq"))

    async def ok(task: Task[Any]) -> str:
        return "fine"

    async with TestBroker(router_with(ok=ok), settings) as tb:
        for body in ["", "{", "[]", '"s"', '{"TaskToken": 1}', "x" * 1_000_000]:
            tb.sqs.put("tasks", body)
        await tb.wait_idle()
        token = await tb.start_task({}, message_type="ok")
        await tb.wait_idle()
    assert tb.sfn.outcomes[token].output == "fine"
    assert tb.sqs.count("dlq") == 6


async def test_retry_later_uses_the_requested_delay() -> None:
    async def later(task: Task[Any]) -> None:
        raise RetryLater(120, "partner API asks us to come back later")

    async with TestBroker(router_with(later=later)) as tb:
        await tb.start_task({}, message_type="later")
        with anyio.fail_after(5):
            while not tb.broker.stats.total(Outcome.RETRY):
                await anyio.sleep(0.01)
        [stored] = tb.sqs.messages("tasks")
        hidden_for = stored.visible_at - anyio.current_time()
    assert 119 <= hidden_for <= 120


async def test_retry_later_on_the_last_attempt_fails_with_retries_exhausted() -> None:
    router = Router()

    @router.handler("later", max_attempts=2)
    async def later(task: Task[Any]) -> None:
        raise RetryLater(0, "still waiting for the partner")

    async with TestBroker(router, make_settings()) as tb:
        token = await tb.start_task({}, message_type="later")
        await tb.wait_idle()
    outcome = tb.sfn.outcomes[token]
    assert (outcome.error, outcome.cause) == (
        "Broker.RetriesExhausted",
        "still waiting for the partner",
    )
    assert outcomes(tb) == {Outcome.RETRY: 1, Outcome.EXHAUSTED: 1}


def test_retry_later_refuses_a_delay_sqs_cannot_express() -> None:
    with pytest.raises(ValueError, match=r"0\.\.43200"):
        RetryLater(50_000)
