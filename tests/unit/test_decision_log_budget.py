"""Requests that open no link are counted each, but logged only up to a budget, so that a
client sending garbage in a loop cannot flood the log; real links are always logged."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from broker.core.completer import Completer
from broker.decisions.decide import UNOPENED_LOG_BURST, UNOPENED_LOG_WINDOW_S, Decisions
from broker.decisions.links import DecisionKeys, DecisionLink, LinkCodec, new_key
from broker.observability.stats import Stats
from broker.testing import FakeSfn


def decision_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == "decision"]


async def test_garbage_is_counted_each_time_but_logged_within_a_budget(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    stats = Stats()
    sfn = FakeSfn()
    codec = LinkCodec(DecisionKeys.parse([new_key()]), "https://broker.test")
    decisions = Decisions(codec, Completer(sfn, concurrency=4), stats, monotonic=lambda: now[0])
    caplog.set_level(logging.INFO, logger="broker.decision")

    garbage = UNOPENED_LOG_BURST + 7
    for _ in range(garbage):
        assert (await decisions.answer("POST", "not-a-link")).http_status == 403
    assert stats.decisions[("none", "refused")] == garbage
    assert len(decision_lines(caplog)) == UNOPENED_LOG_BURST

    # A real link is logged whatever the budget says.
    in_an_hour = datetime.now(UTC) + timedelta(hours=1)
    link = DecisionLink(token=sfn.new_token(), action="approve", expires_at=in_an_hour)
    blob = codec.make(link).rsplit("/", 1)[1]
    await decisions.answer("GET", blob)
    assert len(decision_lines(caplog)) == UNOPENED_LOG_BURST + 1

    # The next window logs again, and its first line says how many went unlogged.
    now[0] += UNOPENED_LOG_WINDOW_S
    await decisions.answer("PUT", "x")
    last = decision_lines(caplog)[-1]
    assert getattr(last, "unlogged_before", None) == 7
    assert "7 more unopened since" in last.getMessage()
