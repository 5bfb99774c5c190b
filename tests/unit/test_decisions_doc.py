"""docs/decisions.md says only what is true: its examples run, its tables are the code's."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from broker import BrokerSettings, Deferred, Task
from broker.core.router import Router
from broker.decisions.decide import _HTTP
from broker.decisions.endpoint import SECURITY_HEADERS
from broker.decisions.links import DecisionKeys, LinkCodec, LinkMaker, new_key
from tests.cli import clean_env

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "decisions.md"


def blocks(language: str) -> list[str]:
    """The fenced blocks of that language ("" for plain fences), fence by fence."""
    found: list[str] = []
    current: list[str] | None = None
    opened = ""
    for line in DOC.read_text().splitlines(keepends=True):
        if line.startswith("```"):
            if current is None:
                current, opened = [], line[3:].strip()
            else:
                if opened == language:
                    found.append("".join(current))
                current = None
        elif current is not None:
            current.append(line)
    assert current is None, "docs/decisions.md: a fence is not closed"
    return found


async def test_the_handler_example_makes_links_notifies_and_defers() -> None:
    [code] = blocks("python")
    namespace: dict[str, Any] = {"__name__": "decisions_doc"}
    exec(compile(code, "docs/decisions.md", "exec"), namespace)
    router: Router = namespace["router"]
    route = router.get("refund-approval")
    assert route is not None
    assert route.options.decisions
    assert route.options.notify

    codec = LinkCodec(DecisionKeys.parse([new_key()]), "https://approvals.example.com")
    published: list[tuple[Mapping[str, str], str | None]] = []

    async def notify(message: Mapping[str, str], subject: str | None) -> str:
        published.append((message, subject))
        return "message-1"

    task: Task[Any] = Task(
        token="token-" + "x" * 60,
        payload=namespace["Refund"](order="A-7", amount=30),
        message_type="refund-approval",
        source="approvals",
        message_id="m-1",
    )
    task._decision_links = LinkMaker(codec, 86_400).links
    task._notify = notify
    assert await route.handler(task) == Deferred()

    [(message, subject)] = published
    assert subject == "A refund to approve"
    sent = json.loads(message["default"])
    for action, url in (("approve", sent["approve_url"]), ("reject", sent["reject_url"])):
        assert url in message["email"]
        assert task.token not in url
        link = codec.open(codec.blob_of(url))
        assert link.action == action
        assert link.subject == "Refund 30 EUR on order A-7"
    approve = codec.open(codec.blob_of(sent["approve_url"]))
    assert approve.output == {"approved": True, "order": "A-7"}
    reject = codec.open(codec.blob_of(sent["reject_url"]))
    assert (reject.error, reject.cause) == ("Refund.Rejected", "Rejected by the reviewer")


def test_each_key_command_prints_a_key_the_broker_accepts() -> None:
    [commands] = blocks("sh")
    lines = [line for line in commands.splitlines() if line.strip()]
    assert len(lines) == 2
    env = {**clean_env(), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for line in lines:
        printed = subprocess.run(
            ["/bin/sh", "-c", line], env=env, capture_output=True, text=True, timeout=60, check=True
        ).stdout.strip()
        DecisionKeys.parse([printed])


def test_the_state_machine_waits_at_least_the_link_lifetime_without_heartbeats() -> None:
    [definition] = blocks("json")
    machine = json.loads(definition)
    state = machine["States"][machine["StartAt"]]
    assert state["Resource"].endswith(".waitForTaskToken")
    ttl_s = BrokerSettings.model_fields["decision_ttl_s"].default
    assert state["TimeoutSeconds"] >= ttl_s
    assert "HeartbeatSeconds" not in definition
    caught = {error for catch in state["Catch"] for error in catch["ErrorEquals"]}
    assert {"Approval.Rejected", "States.Timeout"} <= caught
    assert set(state["Parameters"]["MessageBody"]) == {"Payload.$", "TaskToken.$"}


def test_the_settings_table_lists_every_decision_setting_with_its_default() -> None:
    rows = {
        match[0]: match[1]
        for match in re.findall(r"^\| `(BROKER_DECISION_\w+)` \| ([^|]+) \|", DOC.read_text(), re.M)
    }
    fields = {
        name: info
        for name, info in BrokerSettings.model_fields.items()
        if name.startswith("decision_")
    }
    assert set(rows) == {f"BROKER_{name.upper()}" for name in fields}
    for name, info in fields.items():
        default = info.default
        shown = rows[f"BROKER_{name.upper()}"].strip()
        if default in (None, ()):
            assert shown.startswith("none"), (name, shown)
        else:
            number = int(default) if isinstance(default, float) else default
            assert shown == f"`{number}`", (name, shown)


def test_the_headers_and_the_answers_are_the_endpoints() -> None:
    [headers] = [block for block in blocks("") if "Cache-Control" in block]
    shown = dict(line.split(": ", 1) for line in headers.strip().splitlines())
    assert shown == SECURITY_HEADERS
    answered = {int(code) for code in re.findall(r"\| \*\*(\d{3})\*\*", DOC.read_text())}
    assert answered == set(_HTTP.values())
