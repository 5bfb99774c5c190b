"""What a handler's exception becomes: one Retry verdict, read differently by each source."""

from __future__ import annotations

from typing import Any

from broker import ActivitySettings, ErrorName, NonRetryable, Outcome, RetryLater, Router, Task
from broker.core.verdict import Failed, retry_for, timed_out
from broker.testing import FakeSfn, TestBroker

from .conftest import make_settings


class Fatal(NonRetryable, ValueError):
    pass


def test_an_undecided_exception_is_retried_and_fails_with_its_class_name() -> None:
    retry = retry_for(KeyError("sku"))
    assert (retry.error, retry.cause, retry.delay_s, retry.retryable) == (
        "KeyError",
        "'sku'",
        None,
        True,
    )
    assert retry.exhausted() == retry.at_once() == Failed("KeyError", "'sku'", Outcome.EXHAUSTED)


def test_non_retryable_fails_at_the_first_raise() -> None:
    retry = retry_for(Fatal("bad config"))
    assert not retry.retryable
    assert retry.exhausted() == Failed("Fatal", "bad config", Outcome.EXHAUSTED)


def test_retry_later_exhausts_as_retries_exhausted_but_fails_an_activity_by_its_name() -> None:
    # docs/errors.md (SQS: Broker.RetriesExhausted with the reason) and
    # docs/activities.md (no redelivery: the exception class name and message).
    retry = retry_for(RetryLater(7, "partner busy"))
    assert retry.delay_s == 7
    assert retry.exhausted() == Failed(
        ErrorName.RETRIES_EXHAUSTED, "partner busy", Outcome.EXHAUSTED
    )
    assert retry.at_once() == Failed("RetryLater", "partner busy", Outcome.EXHAUSTED)
    unexplained = retry_for(RetryLater(3))
    assert unexplained.exhausted().cause == "retries requested"
    assert unexplained.at_once().cause == "retry requested in 3s"


def test_a_timeout_is_retried_as_handler_timeout() -> None:
    assert timed_out().exhausted() == Failed(
        ErrorName.HANDLER_TIMEOUT, "handler exceeded its timeout", Outcome.EXHAUSTED
    )


async def test_an_activity_fails_retry_later_at_once_with_its_class_name() -> None:
    router = Router()

    @router.handler("later")
    async def later(task: Task[Any]) -> None:
        raise RetryLater(5, "partner busy")

    settings = make_settings(
        queues=(), activities=(ActivitySettings(name="work", handler="later"),)
    )
    sfn = FakeSfn(activity_poll_s=0.05)
    async with TestBroker(router, settings, sfn=sfn) as tb:
        token = tb.start_activity_task({})
        await tb.wait_idle()
    assert (sfn.outcomes[token].error, sfn.outcomes[token].cause) == ("RetryLater", "partner busy")
    assert tb.broker.stats.total(Outcome.EXHAUSTED) == 1
