"""``broker demo``, the person: reads the decision links out of the "mailbox" and uses them.

The approval handler publishes each task's links to the SNS topic, which delivers them
(raw) to the inbox queue (``local.flows``).  For every notification, first a "mail
scanner" opens both links (GET, as Safe Links and the like do: nothing may be decided),
then the person acts as the plan says: approve (POST the approve link), reject (POST the
reject link), or only open the approve link and walk away (``Case.VERIFY_WAITING``).  The
first approve link used is POSTed a second time, which must answer 409.  Everything unexpected
(a status, a page without its form, a token in the message) is a problem in the summary.

``run`` belongs in a worker thread: synchronous SQS calls and ``urllib`` on loopback.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from broker.local.demo_plan import Case, PlannedExecution
from broker.local.endpoint import AwsEndpoint

__all__ = ["Person", "PersonReport"]

_HTTP_TIMEOUT_S: Final = 10.0
# Loopback only: a proxy from the environment must never see these links.
_OPENER: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class PersonReport:
    """What the person saw and did."""

    notifications: int = 0
    #: GETs answered with the confirmation page (the scanner's and the person's).
    pages: int = 0
    approved: int = 0
    rejected: int = 0
    #: Orders whose link was opened and never used (the execution must still wait).
    only_opened: set[int] = field(default_factory=set)
    #: Statuses of the second POST of a link already used (409 expected).
    repeats: Counter[int] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)


class Person:
    """Answers every notification in the inbox queue as its planned execution says."""

    def __init__(self, aws: AwsEndpoint, inbox_url: str, plan: Sequence[PlannedExecution]) -> None:
        self._sqs = aws.client("sqs")
        self._inbox_url = inbox_url
        self._plan = plan
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self.report = PersonReport()

    def cancel(self) -> None:
        self._cancelled.set()

    def waiting_opened(self) -> int:
        with self._lock:
            return len(self.report.only_opened)

    def run(self) -> None:
        while not self._cancelled.is_set():
            received = self._sqs.receive_message(
                QueueUrl=self._inbox_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
            )
            for message in received.get("Messages", ()):
                try:
                    self._answer(message["Body"])
                except Exception as exc:  # noqa: BLE001 - every failure is a reported problem
                    self._problem(f"notification not handled: {type(exc).__name__}: {exc}")
                self._sqs.delete_message(
                    QueueUrl=self._inbox_url, ReceiptHandle=message["ReceiptHandle"]
                )

    def _answer(self, body: str) -> None:
        # Raw delivery: the body is the handler's `default` document itself.
        document: dict[str, Any] = json.loads(body)
        order = int(json.loads(document["details"])["order"])
        planned = self._plan[order]
        with self._lock:
            self.report.notifications += 1
        approve, reject = document["approve_url"], document["reject_url"]
        # The mail scanner opens every link first: a GET must never decide.
        for url in (approve, reject):
            self._open(url, order)
        if planned.case is Case.VERIFY_WAITING:
            with self._lock:
                self.report.only_opened.add(order)
            return
        url = approve if planned.case is Case.VERIFY_APPROVE else reject
        status = _post(url)
        if status != 200:
            self._problem(f"order {order}: POST of its link answered {status}, expected 200")
            return
        with self._lock:
            # The approve link: the emulators answer a second SendTaskFailure with 200
            # (AWS: TaskTimedOut), so a repeated reject could not show the 409.
            first = planned.case is Case.VERIFY_APPROVE and not self.report.approved
            if planned.case is Case.VERIFY_APPROVE:
                self.report.approved += 1
            else:
                self.report.rejected += 1
        if first:
            # The same link again (a double click, a second person): already decided.
            repeat = _post(url)
            with self._lock:
                self.report.repeats[repeat] += 1
            if repeat != 409:
                self._problem(f"order {order}: a second POST answered {repeat}, expected 409")

    def _open(self, url: str, order: int) -> None:
        status, content_type, page = _get(url)
        if status != 200 or not content_type.startswith("text/html") or "<form" not in page:
            self._problem(f"order {order}: GET answered {status} {content_type}, not the page")
            return
        with self._lock:
            self.report.pages += 1

    def _problem(self, what: str) -> None:
        with self._lock:
            self.report.problems.append(what)


def _get(url: str) -> tuple[int, str, str]:
    try:
        with _OPENER.open(url, timeout=_HTTP_TIMEOUT_S) as reply:
            return reply.status, reply.headers.get("Content-Type", ""), reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), ""


def _post(url: str) -> int:
    # What the page's one-button form sends: an empty urlencoded body.
    request = urllib.request.Request(  # noqa: S310 - http links the demo's broker made
        url,
        data=b"",
        method="POST",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    try:
        with _OPENER.open(request, timeout=_HTTP_TIMEOUT_S) as reply:
            reply.read()
            status: int = reply.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
