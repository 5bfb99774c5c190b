"""A handler hands its task to a person: Deferred, decision links, the start-up checks."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from pydantic import SecretStr

from broker import (
    ActivitySettings,
    Broker,
    ConfigError,
    DecisionLinks,
    DecisionsNotConfigured,
    Deferred,
    Outcome,
    Router,
    Task,
)
from broker.decisions.links import new_key
from broker.service import configuration_problems
from broker.testing import FakeSfn, TestBroker

from .conftest import make_settings


def deferring_router(**options: Any) -> tuple[Router, list[DecisionLinks]]:
    router = Router()
    made: list[DecisionLinks] = []

    @router.handler("approval", **options)
    async def approval(task: Task[Any]) -> Deferred:
        if options.get("decisions"):
            made.append(task.decision_links(subject="Refund #42", details="100 EUR"))
        return Deferred("sent to a reviewer")

    return router, made


async def test_a_deferred_sqs_task_is_deleted_and_left_open(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router, made = deferring_router(decisions=True)
    caplog.set_level(logging.INFO, logger="broker")
    async with TestBroker(router) as tb:
        token = await tb.start_task({"amount": 100}, message_type="approval")
        await tb.wait_idle()
        assert tb.sqs.count("tasks") == 0  # deleted
    assert token not in tb.sfn.outcomes  # nothing sent: the task waits for a person
    assert tb.broker.stats.total(Outcome.DEFERRED) == 1
    assert tb.broker.stats.by_type[("tasks", "approval", Outcome.DEFERRED)] == 1
    assert Outcome.DEFERRED.settled
    outcomes = [r for r in caplog.records if getattr(r, "event", None) == "outcome"]
    assert [getattr(r, "outcome", None) for r in outcomes] == ["deferred"]
    assert "deferred" in tb.broker.health.metrics().decode()
    (links,) = made
    assert links.approve_url.startswith("http://broker.test/decisions/")
    assert links.reject_url.startswith("http://broker.test/decisions/")
    assert links.approve_url != links.reject_url
    assert token not in links.approve_url + links.reject_url


async def test_a_deferred_activity_task_sends_nothing() -> None:
    router, _ = deferring_router()
    settings = make_settings(
        queues=(), activities=(ActivitySettings(name="work", handler="approval"),)
    )
    sfn = FakeSfn(activity_poll_s=0.05)
    async with TestBroker(router, settings, sfn=sfn) as tb:
        token = tb.start_activity_task({})
        await tb.wait_idle()
    assert token in sfn.handed_out
    assert token not in sfn.outcomes
    assert tb.broker.stats.total(Outcome.DEFERRED) == 1


async def test_decision_links_without_the_option_raise_decisions_not_configured() -> None:
    router = Router()
    raised: list[BaseException] = []

    @router.handler("approval")
    async def approval(task: Task[Any]) -> Deferred:
        try:
            task.decision_links(subject="x")
        except DecisionsNotConfigured as exc:
            raised.append(exc)
        try:
            await task.notify({"default": "{}"})
        except DecisionsNotConfigured as exc:
            raised.append(exc)
        return Deferred()

    async with TestBroker(router) as tb:
        await tb.start_task({}, message_type="approval")
        await tb.wait_idle()
    assert [str(e) for e in raised] == [
        "task.decision_links() needs decisions=True on the handler's route: "
        "@router.handler(..., decisions=True)",
        "task.notify() needs notify=True on the handler's route: @router.handler(..., notify=True)",
    ]
    assert all(isinstance(e, ConfigError) for e in raised)


def test_start_up_needs_keys_and_base_url_for_a_decisions_route() -> None:
    router, _ = deferring_router(decisions=True)
    problems = [str(p) for p in configuration_problems(make_settings(), router)]
    origin = router.routes["approval"].origin
    assert problems == [
        f"BROKER_DECISION_KEYS: not set, and handler type(s) 'approval' (from {origin}) have "
        "decisions=True; set a JSON list of keys (`broker decisions keygen` prints one)",
        f"BROKER_DECISION_BASE_URL: not set, and handler type(s) 'approval' (from {origin}) "
        "have decisions=True; set the public URL in front of the decision listener",
    ]
    with pytest.raises(ConfigError, match="BROKER_DECISION_KEYS: not set"):
        Broker(make_settings(), router)
    ready = make_settings(
        decision_keys=(SecretStr(new_key()),), decision_base_url="https://a.example"
    )
    assert configuration_problems(ready, router) == []


def test_start_up_needs_a_topic_for_a_notify_route() -> None:
    router, _ = deferring_router(notify=True)
    (problem,) = configuration_problems(make_settings(), router)
    assert str(problem).startswith("BROKER_DECISION_TOPIC: not set, and handler type(s) 'approval'")
    assert configuration_problems(make_settings(decision_topic="approvals"), router) == []


def test_a_bad_key_is_refused_at_start_up_without_quoting_it() -> None:
    router, _ = deferring_router()
    bad = "c2hvcnQ="  # 5 bytes
    settings = make_settings(decision_keys=(SecretStr(new_key()), SecretStr(bad)))
    (problem,) = configuration_problems(settings, router)
    assert "BROKER_DECISION_KEYS: key 1 is not 32 bytes" in str(problem)
    assert bad not in str(problem)
    assert bad not in repr(settings)
    with pytest.raises(ConfigError):
        Broker(settings, router)


@pytest.mark.parametrize(
    "url", ["ftp://a.example", "a.example", "https://", "https://a.example/?x=1", "http://a#f"]
)
def test_the_base_url_must_be_http_or_https(url: str) -> None:
    from broker.core.settings import load_settings

    # Given as an argument, the error names it so (from the environment it would say
    # BROKER_DECISION_BASE_URL): where the value came from.
    with pytest.raises(ConfigError, match=r"decision_base_url \(argument\)"):
        load_settings(decision_base_url=url)


def test_the_base_url_loses_its_trailing_slash() -> None:
    from broker.core.settings import load_settings

    assert load_settings(decision_base_url="https://a.example/x/").decision_base_url == (
        "https://a.example/x"
    )
