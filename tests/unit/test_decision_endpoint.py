"""The decision endpoint over HTTP, on the fakes: every answer, its headers, its traces."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, quote_plus

import aiohttp
import pytest
from pydantic import SecretStr

from broker import DecisionLinks, Deferred, Router, Task
from broker.decisions.endpoint import SECURITY_HEADERS
from broker.decisions.links import DecisionKeys, DecisionLink, LinkCodec, new_key
from broker.observability.redact import token_ref
from broker.testing import FakeSfn, TestBroker, client_error

from .conftest import make_settings

KEY = new_key()
BASE = "http://127.0.0.1"


def approval_router() -> tuple[Router, dict[str, DecisionLinks]]:
    router = Router()
    links: dict[str, DecisionLinks] = {}

    @router.handler("approval", decisions=True)
    async def approval(task: Task[Any]) -> Deferred:
        links[task.token] = task.decision_links(
            subject=task.payload.get("subject", ""),
            details=task.payload.get("details", ""),
            approve={"approved": True},
            reject=("Approval.Rejected", "Rejected by the reviewer"),
        )
        return Deferred()

    return router, links


class Running:
    def __init__(
        self, tb: TestBroker, links: dict[str, DecisionLinks], http: aiohttp.ClientSession
    ):
        self.tb, self.links, self.http = tb, links, http

    @property
    def port(self) -> int:
        assert self.tb.broker.decision_port is not None
        return self.tb.broker.decision_port

    def local(self, url: str) -> str:
        # Links point at the public base URL; the test talks to the listener directly.
        return f"http://127.0.0.1:{self.port}/decisions/" + url.rsplit("/decisions/", 1)[1]

    async def task(self, **payload: Any) -> tuple[str, DecisionLinks]:
        token = await self.tb.start_task(payload, message_type="approval")
        await self.tb.wait_idle()
        return token, self.links[token]

    async def call(self, method: str, url: str, **kwargs: Any) -> tuple[int, str, Any]:
        async with self.http.request(method, self.local(url), **kwargs) as reply:
            return reply.status, await reply.text(), reply.headers


@asynccontextmanager
async def started(sfn: FakeSfn) -> AsyncIterator[Running]:
    # A context manager, not a fixture: the broker's task group must be entered and
    # left by the same task.
    router, links = approval_router()
    settings = make_settings(
        decision_keys=(SecretStr(KEY),),
        decision_base_url="https://approve.example.com",
        decision_port=0,
        decision_host="127.0.0.1",
        completion_max_attempts=2,
    )
    async with TestBroker(router, settings, sfn=sfn) as tb, aiohttp.ClientSession() as http:
        yield Running(tb, links, http)


@pytest.fixture
def sfn() -> FakeSfn:
    return FakeSfn()


def assert_security_headers(headers: Any) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert headers[name] == value, name
    assert headers["Content-Type"] == "text/html; charset=utf-8"


async def test_get_shows_an_escaped_page_with_one_post_button_and_decides_nothing(
    sfn: FakeSfn,
) -> None:
    async with started(sfn) as running:
        token, links = await running.task(
            subject="Refund <script>alert(1)</script>", details='100 EUR & "more"\nline 2'
        )
        status, page, headers = await running.call("GET", links.approve_url)
        assert status == 200
        assert_security_headers(headers)
        assert "<script" not in page
        assert "Refund &lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert "100 EUR &amp; &quot;more&quot;\nline 2" in page
        assert page.count("<form") == 1
        assert '<form method="post">' in page
        assert "approves the request" in page
        assert links.expires_at.strftime("%Y-%m-%d %H:%M UTC") in page
        status, page, headers = await running.call("GET", links.reject_url)
        assert status == 200
        assert "fails with Approval.Rejected" in page
        status, body, headers = await running.call("HEAD", links.approve_url)
        assert (status, body) == (200, "")
        assert_security_headers(headers)
        # Opening the links, as a mail scanner would, called Step Functions not once.
        assert token not in sfn.outcomes
        assert sum(sfn.calls.values()) == 0


async def test_post_approve_succeeds_with_the_output_and_decided_at(sfn: FakeSfn) -> None:
    async with started(sfn) as running:
        token, links = await running.task(subject="Refund #42")
        status, page, headers = await running.call("POST", links.approve_url)
        assert status == 200
        assert_security_headers(headers)
        assert "Approved" in page
        outcome = sfn.outcomes[token]
        assert outcome.status == "success"
        assert outcome.output["approved"] is True
        decided = datetime.fromisoformat(outcome.output["decided_at"])
        assert decided.tzinfo is not None
        assert abs((datetime.now(UTC) - decided).total_seconds()) < 5
        # The same link again, or its sibling: the replica knows the task closed, and
        # answers as Step Functions would without asking it (test_decision_hostile.py).
        for url in (links.approve_url, links.reject_url):
            status, page, headers = await running.call("POST", url)
            assert status == 409
            assert_security_headers(headers)
            assert "Already decided" in page
        assert sfn.outcomes[token].status == "success"
        assert sfn.duplicates == 0


async def test_post_reject_fails_the_task_with_its_error(sfn: FakeSfn) -> None:
    async with started(sfn) as running:
        token, links = await running.task()
        status, page, _ = await running.call("POST", links.reject_url, data=b"x" * 100)
        assert status == 200
        assert "Rejected" in page
        outcome = sfn.outcomes[token]
        assert (outcome.status, outcome.error, outcome.cause) == (
            "failure",
            "Approval.Rejected",
            "Rejected by the reviewer",
        )


async def test_expired_links_answer_410_without_calling_step_functions(sfn: FakeSfn) -> None:
    async with started(sfn) as running:
        token, _ = await running.task()
        past = LinkCodec(DecisionKeys.parse([KEY]), "https://approve.example.com")
        expired = past.make(
            DecisionLink(token, "approve", datetime.fromtimestamp(1_000_000, UTC), output={})
        )
        for method in ("GET", "POST"):
            status, page, headers = await running.call(method, expired)
            assert status == 410
            assert_security_headers(headers)
            assert "expired" in page
        assert sum(sfn.calls.values()) == 0
        assert token not in sfn.outcomes


async def test_tampered_unknown_key_and_garbage_links_answer_403(sfn: FakeSfn) -> None:
    async with started(sfn) as running:
        token, links = await running.task()
        blob = links.approve_url.rsplit("/", 1)[1]
        middle = len(blob) // 2
        flipped = blob[:middle] + ("A" if blob[middle] != "A" else "B") + blob[middle + 1 :]
        stranger = LinkCodec(DecisionKeys.parse([new_key()]), BASE).make(
            DecisionLink(token, "approve", links.expires_at, output={})
        )
        for url in (f"{BASE}/decisions/{flipped}", stranger, f"{BASE}/decisions/not-a-link"):
            for method in ("GET", "POST"):
                status, page, headers = await running.call(method, url)
                assert status == 403, (url, method)
                assert_security_headers(headers)
                assert "not valid" in page
        assert sum(sfn.calls.values()) == 0


async def test_other_methods_paths_and_big_bodies_are_refused_with_the_headers(
    sfn: FakeSfn,
) -> None:
    async with started(sfn) as running:
        _, links = await running.task()
        for method in ("PUT", "DELETE", "OPTIONS", "PATCH"):
            status, _, headers = await running.call(method, links.approve_url)
            assert status == 405, method
            assert headers["Allow"] == "GET, HEAD, POST"
            assert_security_headers(headers)
        async with running.http.get(f"http://127.0.0.1:{running.port}/elsewhere") as reply:
            assert reply.status == 404
            assert_security_headers(reply.headers)
        async with running.http.get(f"http://127.0.0.1:{running.port}/metrics") as reply:
            assert reply.status == 404  # the probes and metrics are on their own listener
        status, _, headers = await running.call("POST", links.approve_url, data=b"x" * 5000)
        assert status == 413
        assert_security_headers(headers)
        assert running.tb.sfn.outcomes == {}


@pytest.mark.parametrize("code", ["ThrottlingException", "ServiceUnavailable"])
async def test_step_functions_unavailable_answers_503_and_a_retry_decides(
    sfn: FakeSfn, code: str
) -> None:
    async with started(sfn) as running:
        token, links = await running.task()
        sfn.fail_next("send_task_success", client_error(code, status=503), times=2)
        status, page, headers = await running.call("POST", links.approve_url)
        assert status == 503
        assert_security_headers(headers)
        assert "try again" in page
        assert token not in sfn.outcomes
        status, _, _ = await running.call("POST", links.approve_url)
        assert status == 200
        assert sfn.outcomes[token].status == "success"


async def test_one_log_event_and_one_count_per_answer_and_never_the_token_or_the_link(
    sfn: FakeSfn, caplog: pytest.LogCaptureFixture
) -> None:
    async with started(sfn) as running:
        caplog.set_level(logging.DEBUG)
        token, links = await running.task(subject="s")
        answers = [
            await running.call("GET", links.approve_url),
            await running.call("POST", links.approve_url),
            await running.call("POST", links.reject_url),
            await running.call("PUT", links.reject_url),
            await running.call("GET", f"{BASE}/decisions/garbage"),
        ]
        assert [a[0] for a in answers] == [200, 200, 409, 405, 403]
        events = [r for r in caplog.records if getattr(r, "event", None) == "decision"]
        assert [(r.__dict__["action"], r.__dict__["status"]) for r in events] == [
            ("approve", "viewed"),
            ("approve", "approved"),
            ("reject", "already_decided"),
            ("none", "method_not_allowed"),
            ("none", "refused"),
        ]
        assert {r.__dict__["token_ref"] for r in events[:3]} == {token_ref(token)}
        metrics = running.tb.broker.health.metrics().decode()
        for action, status in [("approve", "viewed"), ("approve", "approved"), ("none", "refused")]:
            assert f'broker_decisions_total{{action="{action}",status="{status}"}} 1.0' in metrics
        text = "\n".join(
            [r.getMessage() for r in caplog.records]
            + [repr(vars(r)) for r in caplog.records]
            + [metrics]
        )
        blobs = [url.rsplit("/", 1)[1] for url in (links.approve_url, links.reject_url)]
        for secret in (token, quote(token, safe=""), quote_plus(token), *blobs):
            assert secret not in text
        assert not re.search(r"decisions/[A-Za-z0-9_-]{20,}", text)


async def test_test_broker_decide_runs_the_same_path_without_http() -> None:
    router, links = approval_router()
    async with TestBroker(router) as tb:
        first = await tb.start_task({}, message_type="approval")
        second = await tb.start_task({}, message_type="approval")
        await tb.wait_idle()
        assert tb.broker.decision_port is None  # no listener unless asked
        assert await tb.decide(links[first].approve_url, method="GET") == 200
        assert first not in tb.sfn.outcomes
        assert await tb.decide(links[first].approve_url) == 200
        assert await tb.decide(links[first].reject_url) == 409
        blob = links[second].reject_url.rsplit("/", 1)[1]
        assert await tb.decide(blob) == 200
        assert await tb.decide(blob[:-2] + "xx") == 403
        assert await tb.decide(blob, method="PUT") == 405
    assert tb.sfn.outcomes[first].output["approved"] is True
    assert tb.sfn.outcomes[second].error == "Approval.Rejected"
