"""``TestBroker`` in the shell of the local loop: its settings come only from what the
test passes, never from ``BROKER_*`` variables or a ``.env`` (issue 22, item 5)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker import BrokerSettings, QueueSettings, Router, Task
from broker.testing import TestBroker

router = Router()


@router.handler("approval", notify=True, idempotent=True)
async def approval(task: Task[Any]) -> dict[str, str]:
    await task.notify({"default": "approve?"})
    return {"asked": "yes"}


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port in use, as a running `broker run` holds 8080."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield int(held.getsockname()[1])


@pytest.fixture
def local_loop_shell(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, busy_port: int) -> None:
    """The README's shell: `eval "$(broker local deploy …)"` and a few settings of one's
    own, the same in a .env of the plugin's directory."""
    shell = {
        "BROKER_HTTP_PORT": str(busy_port),
        "BROKER_HTTP_HOST": "127.0.0.1",
        "BROKER_DECISION_PORT": str(busy_port),
        "BROKER_DECISION_TOPIC": "arn:aws:sns:us-east-1:000000000000:local-decisions",
        "BROKER_IDEMPOTENCY_TABLE": "shell-table",
        "BROKER_QUEUES": '[{"name": "orders", "dead_letter_queue": "orders-dlq"}]',
        "BROKER_HANDLERS": '["shop:router"]',
        "BROKER_MAX_ATTEMPTS": "1",
    }
    for name, value in shell.items():
        monkeypatch.setenv(name, value)
    (tmp_path / ".env").write_text("BROKER_CONCURRENCY=1\nBROKER_RETRY_BASE_DELAY_S=30\n")
    monkeypatch.chdir(tmp_path)


@pytest.mark.usefixtures("local_loop_shell")
async def test_the_default_settings_read_nothing_from_the_shell() -> None:
    async with TestBroker(router) as tb:
        token = await tb.start_task({}, message_type="approval")
        await tb.wait_idle()
    assert tb.sfn.outcomes[token].output == {"asked": "yes"}
    settings = tb.settings
    assert (settings.http_port, settings.decision_port) == (None, None)
    assert [q.name for q in settings.queues] == ["tasks"]
    assert (settings.handlers, settings.concurrency, settings.max_attempts) == ((), 128, 5)
    # The documented topic and table, not the shell's.
    assert [m.topic_arn for m in tb.sns.published] == [tb.sns.arn_of("decisions")]
    assert settings.idempotency_table == "broker-idempotency"


@pytest.mark.usefixtures("local_loop_shell")
async def test_settings_the_test_builds_keep_only_what_it_passed() -> None:
    settings = BrokerSettings(
        queues=(QueueSettings(name="mine", wait_time_s=1),),
        entry_points=False,
        retry_base_delay_s=0,
        delete_linger_s=0.01,
        concurrency=4,
    )
    async with TestBroker(router, settings) as tb:
        token = await tb.start_task({}, message_type="approval")
        await tb.wait_idle()
    assert tb.sfn.outcomes[token].output == {"asked": "yes"}
    assert [q.name for q in tb.settings.queues] == ["mine"]
    assert tb.settings.concurrency == 4  # passed: kept
    assert (tb.settings.http_port, tb.settings.decision_port) == (None, None)
    assert (tb.settings.handlers, tb.settings.max_attempts, tb.settings.retry_base_delay_s) == (
        (),
        5,
        0,
    )
    assert [m.topic_arn for m in tb.sns.published] == [tb.sns.arn_of("decisions")]
    # A value the test passes wins, even when the shell has the same variable.
    asked = settings.model_copy(update={"decision_topic": "mine", "http_port": 0})
    async with TestBroker(router, asked) as tb:
        await tb.start_task({}, message_type="approval")
        await tb.wait_idle()
    assert [m.topic_arn for m in tb.sns.published] == [tb.sns.arn_of("mine")]
    assert tb.settings.http_port == 0
