"""The human-approval handler of seed 004: a person approves or rejects the task from a link.

Load it with ``BROKER_HANDLERS='["handlers.approval:router"]'``; it needs
``BROKER_DECISION_KEYS``, ``BROKER_DECISION_BASE_URL`` and ``BROKER_DECISION_TOPIC``
(docs/decisions.md).  For a message of type ``approval`` (or a queue whose
``default_handler`` is ``approval``) it makes an approve and a reject link, publishes one
SNS message with both, and leaves the task open: the workflow waits until the person
presses a link's button (or the state's ``TimeoutSeconds`` passes).

- payload: ``subject`` and ``details`` (both optional; other fields allowed, and shown as
  the details when ``details`` is not given).  ``details`` may be any JSON value: text is
  shown as it is (at most 2,000 characters), anything else as indented JSON, cut to fit;
  the page escapes it, and the notification carries it as that text;
- SNS (``MessageStructure=json``): ``default`` is a JSON document
  ``{"approve_url", "reject_url", "expires_at", "subject", "details"}`` (what an SQS or
  Lambda subscriber reads), ``email`` the same as plain text;
- approve: SendTaskSuccess with ``{"approved": true, "decided_at": "<ISO 8601>"}``;
- reject: SendTaskFailure with error ``Approval.Rejected``.

The links carry the task token encrypted; the message never holds the token itself.
"""

from __future__ import annotations

import json
from typing import Final

import orjson
from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

from broker import DecisionLinks, Deferred, Router, Task
from broker.decisions.links import MAX_DETAILS_CHARS, MAX_SUBJECT_CHARS

__all__ = ["REJECTED", "ApprovalRequest", "approval", "notification", "router"]

router = Router()

#: The error a rejection fails the task with (match it in the state's Catch).
REJECTED: Final = "Approval.Rejected"
_DEFAULT_SUBJECT: Final = "Approval requested"


class ApprovalRequest(BaseModel):
    """The payload: what the person is asked to decide."""

    model_config = ConfigDict(extra="allow")

    subject: str = Field(default=_DEFAULT_SUBJECT, max_length=MAX_SUBJECT_CHARS)
    #: Any JSON value: text is shown as it is, anything else as indented JSON.
    details: JsonValue = None

    @field_validator("details")
    @classmethod
    def _text_fits_a_link(cls, details: JsonValue) -> JsonValue:
        # Text is shown whole or refused, as the subject is; JSON is cut (it is a view).
        if isinstance(details, str) and len(details) > MAX_DETAILS_CHARS:
            raise ValueError(f"details: at most {MAX_DETAILS_CHARS} characters of text")
        return details

    def details_text(self) -> str:
        """``details`` as text, else the payload's other fields as JSON (cut to fit a link)."""
        if isinstance(self.details, str):
            return self.details
        if self.details is not None:
            return _cut(_json_text(self.details, indent=True))
        extra = self.model_extra or {}
        if not extra:
            return ""
        return _cut(_json_text(extra, indent=False))


def _json_text(value: object, *, indent: bool) -> str:
    """JSON a person reads: keys in order; indented, one field a line (the page keeps
    line breaks).  The standard library writes what orjson cannot: integers over 64 bits."""
    option = orjson.OPT_SORT_KEYS | (orjson.OPT_INDENT_2 if indent else 0)
    try:
        return orjson.dumps(value, option=option).decode()
    except TypeError:
        separators = None if indent else (",", ":")
        return json.dumps(
            value,
            indent=2 if indent else None,
            separators=separators,
            sort_keys=True,
            ensure_ascii=False,
        )


def _cut(text: str) -> str:
    return text if len(text) <= MAX_DETAILS_CHARS else text[: MAX_DETAILS_CHARS - 1] + "…"


@router.handler("approval", decisions=True, notify=True)
async def approval(task: Task[ApprovalRequest]) -> Deferred:
    request = task.payload
    subject, details = request.subject, request.details_text()
    links = task.decision_links(
        subject=subject,
        details=details,
        approve={"approved": True},
        reject=(REJECTED, "Rejected by the reviewer"),
    )
    await task.notify(notification(links, subject, details), subject=subject)
    return Deferred("waiting for a person's decision")


def notification(links: DecisionLinks, subject: str, details: str) -> dict[str, str]:
    """The SNS message: ``default`` a JSON document, ``email`` plain text."""
    expires_at = links.expires_at.isoformat().replace("+00:00", "Z")
    document = {
        "approve_url": links.approve_url,
        "reject_url": links.reject_url,
        "expires_at": expires_at,
        "subject": subject,
        "details": details,
    }
    email = "\n".join(
        [
            subject,
            "",
            *([details, ""] if details else []),
            f"Approve: {links.approve_url}",
            "",
            f"Reject:  {links.reject_url}",
            "",
            "Each link opens a page with one button: nothing is decided until you press it.",
            f"The links expire at {expires_at}. Do not forward this message: whoever holds "
            "a link can decide.",
        ]
    )
    return {"default": orjson.dumps(document).decode(), "email": email}
