"""A person decides in a real browser: ``broker run`` on the embedded moto server with
decision keys, seed 004's flow (``{"Payload", "TaskToken"}`` on an SQS queue) answered by
an approval-like plugin (tests/browser/handlers.py) that defers its task.

Headless Chromium opens the link, sees the page (subject and details shown as text, not
as markup), clicks its one button, and the execution ends as decided.  Opening the page
decides nothing, even with scripts running (a mail scanner's browser); the page runs no
script and needs none; framed by another site it is not shown.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest

from broker.decisions.links import new_key
from broker.local.executions import ExecutionResult, describe_execution, wait_for_executions
from broker.local.flows import SeedFlows, deploy_seed_flows, queue_name
from broker.local.moto import EmbeddedAws
from tests.browser.checks import frame_of, inline_script_result, is_blocked, scripts_in
from tests.browser.conftest import Tab
from tests.browser.handlers import LINKS_DIR
from tests.browser.site import LoopbackSite
from tests.cli import clean_env
from tests.localstack.broker_process import BrokerProcess, broker_process, wait_until

if TYPE_CHECKING:
    from playwright.sync_api import Page, Response

ROOT: Final = Path(__file__).resolve().parents[2]
SUBJECT: Final = 'Refund <b>#42</b> & "co"'
DETAILS: Final = "<script>window.pwned = true</script>\n<img src=x onerror=alert(1)> 120 EUR"


@dataclass(frozen=True)
class Decisions:
    aws: EmbeddedAws
    flows: SeedFlows
    broker: BrokerProcess
    links_dir: Path
    shots: Path

    def ask(self, **payload: str) -> tuple[str, dict[str, str]]:
        """Start one seed-004 execution; its ARN and the links the handler made."""
        ident = uuid.uuid4().hex[:12]
        sfn = self.aws.client("stepfunctions")
        arn: str = sfn.start_execution(
            stateMachineArn=self.flows.state_machines["verification"],
            name=f"browser-{ident}",
            input=json.dumps({"id": ident, **payload}),
        )["executionArn"]
        path = self.links_dir / f"{ident}.json"
        wait_until(path.exists, f"the links of {ident} (broker log: {self.broker.log_path})", 60)
        links: dict[str, str] = json.loads(path.read_text())
        return arn, links

    def status(self, arn: str) -> str:
        return describe_execution(self.aws.client("stepfunctions"), arn).status

    def ended(self, arn: str) -> ExecutionResult:
        return wait_for_executions(self.aws, [arn], timeout_s=60)[arn]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def decisions(aws: EmbeddedAws, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Decisions]:
    aws.reset()
    flows = deploy_seed_flows(aws, prefix="browser")
    work = tmp_path_factory.mktemp("decisions")
    links_dir = work / "links"
    links_dir.mkdir()
    port = free_port()
    queue = {
        "name": queue_name(flows.queues["verification"]),
        "token_fields": ["TaskToken"],
        "payload_fields": ["Payload"],
        "default_handler": "approval",
        "type_attribute": None,
        "type_field": None,
        "wait_time_s": 1,
    }
    env = clean_env(
        **aws.env(),
        BROKER_QUEUES=json.dumps([queue]),
        BROKER_HANDLERS='["tests.browser.handlers:router"]',
        BROKER_ENTRY_POINTS="false",
        BROKER_DECISION_KEYS=json.dumps([new_key()]),
        BROKER_DECISION_BASE_URL=f"http://127.0.0.1:{port}",
        BROKER_DECISION_HOST="127.0.0.1",
        BROKER_DECISION_PORT=str(port),
        PYTHONPATH=str(ROOT),
        **{LINKS_DIR: str(links_dir)},
    )
    with broker_process(env, work) as broker:
        yield Decisions(aws, flows, broker, links_dir, work)


def shot(decisions: Decisions, page: Page, name: str) -> None:
    page.screenshot(path=decisions.shots / f"{name}.png", full_page=True)


def assert_guarded(response: Response | None, status: int) -> None:
    assert response is not None
    assert response.status == status
    headers = response.headers
    assert headers["content-type"].startswith("text/html")
    assert headers["cache-control"] == "no-store"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"
    policy = {d.strip() for d in headers["content-security-policy"].split(";")}
    assert {"default-src 'none'", "frame-ancestors 'none'", "form-action 'self'"} <= policy


def still_waiting(decisions: Decisions, arn: str, page: Page, url: str) -> None:
    """Opened, left alone for a while: nothing decided, the page has not moved."""
    time.sleep(1.5)
    assert page.url == url
    assert decisions.status(arn) == "RUNNING"


def click(page: Page) -> Response | None:
    buttons = page.get_by_role("button")
    assert buttons.count() == 1, "one button: the decision"
    with page.expect_navigation() as navigation:
        buttons.click()
    response: Response | None = navigation.value
    return response


def test_approve_without_scripts_succeeds_the_execution(
    decisions: Decisions, tab_without_js: Tab
) -> None:
    arn, links = decisions.ask(subject=SUBJECT, details=DETAILS)
    page = tab_without_js.page
    assert_guarded(page.goto(links["approve_url"]), 200)
    shot(decisions, page, "approve-page")
    body = page.inner_text("body")
    assert SUBJECT in body, body  # shown as text, not as markup
    assert "<script>window.pwned = true</script>" in body
    assert page.locator("b, img").count() == 0
    still_waiting(decisions, arn, page, links["approve_url"])

    assert_guarded(click(page), 200)
    shot(decisions, page, "approved")
    assert "approved" in page.inner_text("body").lower()
    result = decisions.ended(arn)
    assert result.status == "SUCCEEDED", result
    output: dict[str, Any] = result.output
    assert output["approved"] is True
    assert output["decided_at"]


def test_reject_with_scripts_on_fails_the_execution(decisions: Decisions, tab: Tab) -> None:
    arn, links = decisions.ask(subject="Delete the staging account", details="")
    page = tab.page
    assert_guarded(page.goto(links["reject_url"]), 200)
    # A scanner's browser runs scripts: the page has none, and refuses injected ones.
    assert scripts_in(page) == 0
    assert inline_script_result(page) == "refused: script-src-elem"
    still_waiting(decisions, arn, page, links["reject_url"])

    assert_guarded(click(page), 200)
    shot(decisions, page, "rejected")
    assert "rejected" in page.inner_text("body").lower()
    result = decisions.ended(arn)
    assert result.status == "FAILED", result
    assert result.error == "Approval.Rejected"


def test_a_second_decision_is_answered_already_decided(decisions: Decisions, tab: Tab) -> None:
    arn, links = decisions.ask(subject="Twice", details="")
    page = tab.page
    page.goto(links["reject_url"])
    assert_guarded(click(page), 200)
    assert decisions.ended(arn).status == "FAILED"
    # The sibling link, opened later: its page still shows (links are stateless), its
    # button is answered from Step Functions' word that the task is closed.
    assert_guarded(page.goto(links["approve_url"]), 200)
    assert_guarded(click(page), 409)
    shot(decisions, page, "already-decided")
    assert "already decided" in page.inner_text("body").lower()
    assert decisions.ended(arn).status == "FAILED"


def test_a_late_reject_on_the_replica_that_approved_is_answered_from_memory(
    decisions: Decisions, tab: Tab
) -> None:
    """moto (and LocalStack) accept SendTaskFailure on a closed token with 200, where
    AWS answers TaskTimedOut (409); the replica that decided remembers the task closed
    and answers 409 without asking, so the page says so on the emulators too."""
    arn, links = decisions.ask(subject="Late reject", details="")
    page = tab.page
    page.goto(links["approve_url"])
    assert_guarded(click(page), 200)
    assert decisions.ended(arn).status == "SUCCEEDED"
    page.goto(links["reject_url"])
    assert_guarded(click(page), 409)
    assert "already decided" in page.inner_text("body").lower()
    assert decisions.ended(arn).status == "SUCCEEDED"


def test_the_page_is_not_shown_in_another_sites_frame(
    decisions: Decisions, tab: Tab, site: LoopbackSite
) -> None:
    arn, links = decisions.ask(subject="Framed", details="")
    frame = frame_of(tab.page, site, links["approve_url"])
    shot(decisions, tab.page, "framed")
    assert is_blocked(frame)
    assert frame.get_by_role("button").count() == 0
    assert any("frame-ancestors 'none'" in line for line in tab.console), tab.console
    assert decisions.status(arn) == "RUNNING"
