"""``handlers.approval`` on the fakes: the links published through SNS, decided through
``TestBroker.decide``; never the token in the message."""

from __future__ import annotations

import base64
import html
import json
import os
import urllib.parse
from datetime import UTC, datetime
from typing import Any

import pytest

from broker import BrokerSettings, ConfigError
from broker.service import Broker
from broker.testing import FakeSns, TestBroker, client_error
from broker.testing.sns import PublishedMessage
from handlers.approval import router

from .conftest import make_settings

_KEY = base64.urlsafe_b64encode(os.urandom(32)).decode()
_BASE_URL = "https://approvals.example.com/broker"


def approval_settings(**overrides: Any) -> BrokerSettings:
    values: dict[str, Any] = {
        "decision_keys": [_KEY],
        "decision_base_url": _BASE_URL,
        "decision_topic": "decisions",
        "decision_port": None,
    }
    values.update(overrides)
    return make_settings(**values)


def _document(published: PublishedMessage) -> dict[str, str]:
    document: dict[str, str] = json.loads(published.default)
    return document


async def _request(tb: TestBroker, payload: Any) -> tuple[str, dict[str, str], PublishedMessage]:
    token = await tb.start_task(payload, message_type="approval")
    await tb.wait_idle()
    [published] = tb.sns.messages("decisions")
    tb.sns.published.clear()
    return token, _document(published), published


async def test_the_links_are_published_and_the_task_waits() -> None:
    async with TestBroker(router, approval_settings()) as tb:
        payload = {"subject": "Refund #42", "details": "200 EUR to ACME", "order": 42}
        _, document, published = await _request(tb, payload)
        assert tb.sfn.outcomes == {}  # deferred: nothing sent, the task stays open
        assert tb.sqs.count("tasks") == 0  # and the message is deleted
    assert published.topic_arn == tb.sns.arn_of("decisions")
    assert published.structure == "json"
    assert published.subject == "Refund #42"
    assert set(published.protocols) == {"default", "email"}
    assert set(document) == {"approve_url", "reject_url", "expires_at", "subject", "details"}
    assert (document["subject"], document["details"]) == ("Refund #42", "200 EUR to ACME")
    assert document["approve_url"].startswith(_BASE_URL + "/decisions/")
    assert document["reject_url"].startswith(_BASE_URL + "/decisions/")
    assert document["approve_url"] != document["reject_url"]
    expires_at = datetime.fromisoformat(document["expires_at"])
    assert 86_000 < (expires_at - datetime.now(UTC)).total_seconds() <= 86_400
    email = published.protocols["email"]
    assert document["approve_url"] in email
    assert document["reject_url"] in email
    assert "Refund #42" in email
    assert "200 EUR to ACME" in email


async def test_the_message_holds_neither_the_token_nor_its_url_encoded_form() -> None:
    async with TestBroker(router, approval_settings()) as tb:
        token, _, published = await _request(tb, {"subject": "s"})
    forms = {token, urllib.parse.quote(token, safe=""), urllib.parse.quote_plus(token)}
    forms |= {base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")}
    for text in (published.message, published.subject or "", *published.protocols.values()):
        for form in forms:
            assert form not in text


async def test_approve_succeeds_with_approved_and_the_decision_time() -> None:
    async with TestBroker(router, approval_settings()) as tb:
        token, document, _ = await _request(tb, {"subject": "Refund #42"})
        assert await tb.decide(document["approve_url"], method="GET") == 200
        assert token not in tb.sfn.outcomes  # GET never decides
        assert await tb.decide(document["approve_url"]) == 200
        # The same link again, or its sibling: already decided.
        assert await tb.decide(document["approve_url"]) == 409
        assert await tb.decide(document["reject_url"]) == 409
    outcome = tb.sfn.outcomes[token]
    assert outcome.status == "success"
    output = json.loads(outcome.output) if isinstance(outcome.output, str) else outcome.output
    assert output["approved"] is True
    assert set(output) == {"approved", "decided_at"}
    decided_at = datetime.fromisoformat(output["decided_at"].replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - decided_at).total_seconds()) < 30


async def test_reject_fails_the_task_with_approval_rejected() -> None:
    async with TestBroker(router, approval_settings()) as tb:
        token, document, _ = await _request(tb, {})
        assert await tb.decide(document["reject_url"]) == 200
    outcome = tb.sfn.outcomes[token]
    assert (outcome.status, outcome.error) == ("failure", "Approval.Rejected")
    assert document["subject"] == "Approval requested"  # no subject in the payload


async def test_without_details_the_other_fields_are_shown() -> None:
    async with TestBroker(router, approval_settings()) as tb:
        _, document, published = await _request(tb, {"order": 7, "amount": 49})
    assert json.loads(document["details"]) == {"amount": 49, "order": 7}
    assert document["details"] in published.protocols["email"]


@pytest.mark.parametrize(
    "payload", [{"subject": "x" * 201}, {"details": "y" * 2001}, {"subject": 3}, []]
)
async def test_a_payload_that_cannot_make_links_fails_with_invalid_input(payload: Any) -> None:
    async with TestBroker(router, approval_settings()) as tb:
        token = await tb.start_task(payload, message_type="approval")
        await tb.wait_idle()
    assert tb.sfn.outcomes[token].error == "Broker.InvalidInput"
    assert tb.sns.published == []


async def test_a_throttled_sns_retries_the_message_and_nothing_is_lost() -> None:
    sns = FakeSns()
    sns.add_topic("decisions")
    sns.fail_next("publish", client_error("Throttled", status=429), times=2)
    async with TestBroker(router, approval_settings(), sns=sns) as tb:
        token = await tb.start_task({"subject": "s"}, message_type="approval")
        await tb.wait_idle()
        assert tb.sqs.count("tasks") == 0
    assert sns.calls["publish"] == 3
    assert len(sns.published) == 1
    assert token not in tb.sfn.outcomes  # still waiting for the person


async def test_a_missing_topic_stops_the_start_naming_the_setting() -> None:
    with pytest.raises(Exception, match="BROKER_DECISION_TOPIC topic 'decisions' not found"):
        async with TestBroker(router, approval_settings(), sns=FakeSns()):
            pass


def test_the_route_needs_the_decision_settings() -> None:
    with pytest.raises(ConfigError, match="BROKER_DECISION_TOPIC"):
        Broker(approval_settings(decision_topic=None), router)


@pytest.mark.parametrize(
    ("details", "shown"),
    [
        ({"amount": 200, "to": "ACME <b>"}, '{\n  "amount": 200,\n  "to": "ACME <b>"\n}'),
        ([1, "two"], '[\n  1,\n  "two"\n]'),
        (42, "42"),
        (True, "true"),
        ({"n": 2**70}, f'{{\n  "n": {2**70}\n}}'),
    ],
    ids=["object", "list", "number", "boolean", "integer over 64 bits"],
)
async def test_details_of_any_json_value_are_shown_as_indented_json(
    details: Any, shown: str
) -> None:
    async with TestBroker(router, approval_settings()) as tb:
        token = tb.sfn.new_token()
        # json: the payload may hold an integer orjson cannot write.
        body = {"TaskToken": token, "input": {"subject": "Refund", "details": details}}
        tb.sqs.put("tasks", json.dumps(body), {"type": "approval"})
        await tb.wait_idle()
        [published] = tb.sns.messages("decisions")
        document = _document(published)
        decisions = tb.broker.decisions
        assert decisions is not None
        page = await decisions.answer("GET", decisions.codec.blob_of(document["approve_url"]))
        assert await tb.decide(document["approve_url"]) == 200
    assert tb.sfn.outcomes[token].status == "success"
    assert document["details"] == shown
    assert shown in published.protocols["email"]
    # The page shows it escaped, its line breaks kept (white-space: pre-wrap).
    assert html.escape(shown) in page.page
    assert "<b>" not in page.page.split("</h1>", 1)[1]


async def test_long_json_details_are_cut_to_fit_a_link() -> None:
    async with TestBroker(router, approval_settings()) as tb:
        _, document, _ = await _request(tb, {"details": {"lines": ["x" * 50] * 100}})
    assert len(document["details"]) == 2000
    assert document["details"].endswith("…")
