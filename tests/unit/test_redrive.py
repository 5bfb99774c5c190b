from __future__ import annotations

from typing import Any

import anyio
import orjson
import pytest

from broker import Outcome, QueueNotFound, QueueSettings, Router, Task
from broker.sqs.redrive import redrive
from broker.testing import FakeSqs, TestBroker

from .conftest import make_settings


async def test_dead_lettered_messages_go_back_to_their_source_without_broker_attributes() -> None:
    sqs = FakeSqs()
    settings = make_settings(
        QueueSettings(name="tasks", wait_time_s=1, dead_letter_queue="dlq"),
        QueueSettings(name="other", wait_time_s=1, dead_letter_queue="dlq"),
    )
    async with TestBroker(Router(), settings, sqs=sqs) as tb:
        for n in range(13):
            sqs.put("tasks", f"not json {n}", {"trace": f"t{n}"})
        sqs.put("other", "[]")
        await tb.wait_idle()
    assert sqs.count("dlq") == 14
    sqs.put("dlq", "hand-made, names no source")

    report = await redrive(sqs, "dlq", sources=["tasks", "other"])

    assert report.moved == {"tasks": 13, "other": 1}
    assert report.no_destination == 1
    assert report.failed == 0
    assert sqs.count("dlq") == 1
    back = sqs.messages("tasks")
    assert sorted(m.body for m in back) == sorted(f"not json {n}" for n in range(13))
    run_ids = set()
    for message in back:
        # The originals, and the mark of this run.
        assert set(message.attributes) == {"trace", "broker.redriven"}
        run_ids.add(message.attributes["broker.redriven"]["StringValue"])
    assert len(run_ids) == 1
    # What is left in the DLQ is handed back at once, not hidden for the next run.
    assert sqs.visible("dlq") == 1
    assert report.lines()[0] == "the DLQ held 15 visible message(s) at the start"
    assert report.lines()[-2:] == [
        "moved 14 in all",
        "left 1 message(s) that name no source queue (use --to)",
    ]


async def test_redrive_to_an_explicit_queue_and_with_a_limit() -> None:
    sqs = FakeSqs()
    sqs.create_queue("dlq")
    sqs.create_queue("retry-here")
    for n in range(25):
        sqs.put("dlq", orjson.dumps({"n": n}))

    report = await redrive(sqs, "dlq", sources=[], to="retry-here", max_messages=12)

    assert report.total_moved == 12
    assert sqs.count("retry-here") == 12
    assert sqs.count("dlq") == 13


async def test_a_redriven_copy_of_a_failed_task_is_dropped_as_task_closed() -> None:
    sqs = FakeSqs()
    settings = make_settings(QueueSettings(name="tasks", wait_time_s=1, dead_letter_queue="dlq"))
    router = Router()

    @router.handler("ok")
    async def ok(task: Task[Any]) -> str:
        return "handled after the fix"

    # First run: no handler for "ok" yet, so the task fails fast and is dead-lettered.
    async with TestBroker(Router(), settings, sqs=sqs) as tb:
        token = await tb.start_task({}, message_type="ok")
        await tb.wait_idle()
    assert sqs.count("dlq") == 1
    await redrive(sqs, "dlq", sources=["tasks"])
    # Second run with the handler: the task is closed already, so the copy is dropped.
    async with TestBroker(router, settings, sqs=sqs, sfn=tb.sfn) as tb2:
        await tb2.wait_idle()
    assert tb2.sfn.outcomes[token].error == "Broker.UnknownMessageType"
    assert tb2.broker.stats.total(Outcome.TASK_CLOSED) == 1
    assert sqs.count("tasks") == 0


async def test_a_missing_destination_fails_before_anything_is_received() -> None:
    sqs = FakeSqs()
    sqs.create_queue("dlq")
    for n in range(3):
        sqs.put("dlq", f"not json {n}")

    with pytest.raises(QueueNotFound, match="missing-queue"):
        await redrive(sqs, "dlq", sources=[], to="missing-queue")
    with pytest.raises(QueueNotFound, match="missing-queue"):
        await redrive(sqs, "dlq", sources=[], to=sqs.url_of("missing-queue"))

    assert sqs.receive_sizes == [], "nothing received, so nothing hidden"
    assert sqs.visible("dlq") == 3


async def test_a_missing_dead_letter_queue_is_queue_not_found() -> None:
    sqs = FakeSqs()
    with pytest.raises(QueueNotFound, match="no-such-dlq"):
        await redrive(sqs, sqs.url_of("no-such-dlq"), sources=["tasks"])


async def test_a_source_queue_that_is_gone_counts_as_failed_and_stays_visible() -> None:
    sqs = FakeSqs()
    sqs.create_queue("dlq")
    sqs.create_queue("tasks")
    sqs.put("dlq", "a", {"broker.source_queue": "deleted-since"})
    sqs.put("dlq", "b", {"broker.source_queue": "tasks"})

    report = await redrive(sqs, "dlq", sources=["tasks", "deleted-since"])

    assert (report.moved, report.failed) == ({"tasks": 1}, 1)
    assert sqs.bodies("dlq") == ["a"]
    assert sqs.visible("dlq") == 1


async def test_redrive_finishes_while_a_broker_dead_letters_the_copies_again() -> None:
    """Poison and unknown-type copies, redriven to the queue a broker consumes.

    The broker dead-letters the poison again (once: the run leaves its own copies
    alone) and drops the unknown-type copies, whose tasks it failed already.
    """
    sqs = FakeSqs()
    settings = make_settings(
        QueueSettings(name="tasks", wait_time_s=1, dead_letter_queue="dlq"),
        delete_linger_s=0.01,
    )
    async with TestBroker(Router(), settings, sqs=sqs) as tb:
        for n in range(15):
            sqs.put("tasks", f"poison {n}")
        tokens = [await tb.start_task({"n": n}, message_type="no-handler") for n in range(5)]
        await tb.wait_idle()
        assert sqs.count("dlq") == 20
        assert tb.broker.stats.total(Outcome.UNKNOWN_TYPE) == 5

        with anyio.fail_after(20):
            report = await redrive(sqs, "dlq", sources=["tasks"])
        await tb.wait_idle()

        assert report.at_start == 20
        assert report.total_moved == 20, report.lines()
        assert report.came_back <= 15
        # Nothing grew, nothing was lost: each poison message is back in the DLQ once,
        # each unknown-type copy was dropped: this process settled those tasks moments
        # ago, so its memory (sqs.memory) deletes them as duplicates, with no call.
        assert sorted(sqs.bodies("dlq")) == sorted(f"poison {n}" for n in range(15))
        assert sqs.count("tasks") == 0
        assert tb.broker.stats.total(Outcome.DUPLICATE) == 5
        assert tb.broker.stats.total(Outcome.UNKNOWN_TYPE) == 5
        assert all(tb.sfn.outcomes[t].error == "Broker.UnknownMessageType" for t in tokens)
        for copy in sqs.messages("dlq"):
            assert copy.attributes["broker.reason"]["StringValue"] == "InvalidJson"
            assert "broker.redriven" in copy.attributes

        # A second run moves the poison again (the operator asked for it), once each.
        with anyio.fail_after(20):
            again = await redrive(sqs, "dlq", sources=["tasks"])
        await tb.wait_idle()
        assert again.total_moved == 15
        assert sqs.count("dlq") == 15


async def test_a_redriven_copy_of_an_exhausted_task_is_dropped_not_dead_lettered_again() -> None:
    sqs = FakeSqs()
    settings = make_settings(QueueSettings(name="tasks", wait_time_s=1, dead_letter_queue="dlq"))
    router = Router()
    runs = 0

    @router.handler("broken", max_attempts=1)
    async def broken(task: Task[Any]) -> None:
        nonlocal runs
        runs += 1
        raise RuntimeError("still broken")

    async with TestBroker(router, settings, sqs=sqs) as tb:
        token = await tb.start_task({}, message_type="broken")
        await tb.wait_idle()
        assert sqs.count("dlq") == 1
        # Redriven later, or to another replica: this process's memory of settled
        # tasks (sqs.memory) would delete the copy as a duplicate without a run.
        tb.broker.consumers[0]._processor.memory.clear()
        with anyio.fail_after(10):
            report = await redrive(sqs, "dlq", sources=["tasks"])
        await tb.wait_idle()
    assert report.total_moved == 1
    # The handler ran again; its failure was answered "task closed": dropped, no new copy.
    assert runs == 2
    assert tb.sfn.outcomes[token].error == "RuntimeError"
    assert tb.broker.stats.total(Outcome.TASK_CLOSED) == 1
    assert (sqs.count("dlq"), sqs.count("tasks")) == (0, 0)


async def test_a_copy_naming_a_queue_the_settings_do_not_stays_in_the_dlq() -> None:
    """``broker.source_queue`` is a producer's word: SQS's own redrive moves a message to
    the DLQ with whatever attributes its sender gave it."""
    sqs = FakeSqs()
    for name in ("dlq", "tasks", "elsewhere"):
        sqs.create_queue(name)
    foreign_url = "https://sqs.eu-west-1.amazonaws.com/999999999999/attacker"
    sqs.put("dlq", "to a foreign URL", {"broker.source_queue": foreign_url})
    sqs.put("dlq", "to a queue of this account", {"broker.source_queue": "elsewhere"})
    sqs.put("dlq", "by its URL", {"broker.source_queue": sqs.url_of("tasks")})
    sqs.put("dlq", "by its name", {"broker.source_queue": "tasks"})

    report = await redrive(sqs, "dlq", sources=["tasks"])

    assert report.moved == {sqs.url_of("tasks"): 1, "tasks": 1}
    assert report.not_allowed == {foreign_url: 1, "elsewhere": 1}
    assert report.failed == 0
    assert sorted(sqs.bodies("tasks")) == ["by its URL", "by its name"]
    assert sqs.count("elsewhere") == 0
    assert sorted(sqs.bodies("dlq")) == ["to a foreign URL", "to a queue of this account"]
    assert sqs.visible("dlq") == 2, "handed back at once for the next run"
    assert (
        f"left 1 message(s) whose broker.source_queue names {foreign_url!r}, a queue the "
        "settings do not name (BROKER_QUEUES; or choose one with --to)"
    ) in report.lines()

    # The operator's --to goes anywhere.
    chosen = await redrive(sqs, "dlq", sources=["tasks"], to="elsewhere")
    assert chosen.moved == {"elsewhere": 2}
    assert sqs.count("dlq") == 0


async def test_settings_naming_a_queue_by_url_allow_copies_naming_it_by_name() -> None:
    sqs = FakeSqs()
    for name in ("dlq", "tasks", "other"):
        sqs.create_queue(name)
    sqs.put("dlq", "a", {"broker.source_queue": "tasks"})
    sqs.put("dlq", "b", {"broker.source_queue": "other"})

    report = await redrive(sqs, "dlq", sources=[sqs.url_of("tasks")])

    assert report.moved == {"tasks": 1}
    assert report.not_allowed == {"other": 1}
    assert sqs.bodies("tasks") == ["a"]
