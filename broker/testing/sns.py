"""An in-memory SNS with the calls the broker makes (``FakeSns``, ``PublishedMessage``)."""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from broker.testing._faults import Faults, client_error

__all__ = ["FakeSns", "PublishedMessage"]

#: SNS's limit on one message, in UTF-8 bytes (the JSON document for MessageStructure=json).
MAX_MESSAGE_BYTES = 262_144
#: A subject is printable ASCII, shorter than 100 characters, not starting with a space.
_MAX_SUBJECT_CHARS = 99
#: ListTopics answers 100 topics a page.
_PAGE = 100


@dataclass(frozen=True)
class PublishedMessage:
    """One accepted Publish call, as it was sent."""

    topic_arn: str
    #: The ``Message`` parameter, exactly as sent (a JSON document for ``structure="json"``).
    message: str
    subject: str | None
    #: ``MessageStructure``: ``"json"`` or ``None``.
    structure: str | None
    message_id: str = ""

    @property
    def protocols(self) -> dict[str, str]:
        """The message per protocol (``{"default": …}`` when it had no structure)."""
        if self.structure != "json":
            return {"default": self.message}
        parsed: dict[str, str] = orjson.loads(self.message)
        return parsed

    @property
    def default(self) -> str:
        """What a subscriber without a protocol of its own receives."""
        return self.protocols["default"]


@dataclass
class _Topic:
    name: str
    arn: str
    #: (protocol, endpoint, attributes) of each Subscribe call.
    subscriptions: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)


class FakeSns(Faults):
    """Topics, subscriptions (recorded, not delivered) and Publish with AWS's validation:
    an unknown topic ``NotFound``; with ``MessageStructure="json"`` the message must be a
    JSON object of strings with a ``default`` key; at most 256 KiB; a subject SNS would
    take.  ``published`` lists what was accepted; ``fail_next("publish", …)`` injects
    faults, as on the other fakes."""

    def __init__(self, *, region: str = "us-east-1", account: str = "000000000000") -> None:
        super().__init__()
        self._arn_prefix = f"arn:aws:sns:{region}:{account}:"
        self.topics: dict[str, _Topic] = {}
        self.published: list[PublishedMessage] = []
        self._subscriptions = itertools.count(1)

    # -- set-up helpers (synchronous, not part of the SNS API)
    def add_topic(self, name: str) -> str:
        """Create a topic (idempotent, as on AWS); returns its ARN."""
        arn = self._arn_prefix + name
        self.topics.setdefault(arn, _Topic(name, arn))
        return arn

    def arn_of(self, name: str) -> str:
        return self._arn_prefix + name

    def messages(self, topic: str) -> list[PublishedMessage]:
        """What was published to ``topic`` (name or ARN)."""
        arn = topic if topic.startswith("arn:") else self.arn_of(topic)
        return [message for message in self.published if message.topic_arn == arn]

    # -- the API
    async def create_topic(self, *, Name: str, **_: Any) -> dict[str, Any]:
        async with self._call("create_topic"):
            return {"TopicArn": self.add_topic(Name)}

    async def list_topics(self, *, NextToken: str | None = None) -> dict[str, Any]:
        async with self._call("list_topics"):
            start = int(NextToken or 0)
            arns = list(self.topics)
            page: dict[str, Any] = {
                "Topics": [{"TopicArn": arn} for arn in arns[start : start + _PAGE]]
            }
            if start + _PAGE < len(arns):
                page["NextToken"] = str(start + _PAGE)
            return page

    async def get_topic_attributes(self, *, TopicArn: str) -> dict[str, Any]:
        async with self._call("get_topic_attributes"):
            topic = self._topic(TopicArn)
            return {
                "Attributes": {
                    "TopicArn": topic.arn,
                    "SubscriptionsConfirmed": str(len(topic.subscriptions)),
                }
            }

    async def subscribe(
        self,
        *,
        TopicArn: str,
        Protocol: str,
        Endpoint: str,
        Attributes: dict[str, str] | None = None,
        **_: Any,
    ) -> dict[str, Any]:
        async with self._call("subscribe"):
            topic = self._topic(TopicArn)
            topic.subscriptions.append((Protocol, Endpoint, dict(Attributes or {})))
            return {"SubscriptionArn": f"{topic.arn}:{next(self._subscriptions)}"}

    async def publish(
        self,
        *,
        TopicArn: str,
        Message: str,
        Subject: str | None = None,
        MessageStructure: str | None = None,
        **_: Any,
    ) -> dict[str, Any]:
        async with self._call("publish"):
            self._topic(TopicArn)
            _check_message(Message, MessageStructure)
            if Subject is not None:
                _check_subject(Subject)
            message_id = str(uuid.uuid4())
            self.published.append(
                PublishedMessage(TopicArn, Message, Subject, MessageStructure, message_id)
            )
            return {"MessageId": message_id}

    def _topic(self, arn: str) -> _Topic:
        if not arn.startswith("arn:aws:sns:"):
            raise client_error("InvalidParameter", "Invalid parameter: TopicArn", op="Publish")
        try:
            return self.topics[arn]
        except KeyError:
            raise client_error("NotFound", "Topic does not exist", status=404) from None


def _invalid(detail: str) -> Exception:
    return client_error("InvalidParameter", f"Invalid parameter: {detail}", op="Publish")


def _check_message(message: str, structure: str | None) -> None:
    if not message:
        raise _invalid("Empty message")
    if len(message.encode()) > MAX_MESSAGE_BYTES:
        raise _invalid("Message too long")
    if structure is None:
        return
    if structure != "json":
        raise _invalid("MessageStructure")
    try:
        parsed = orjson.loads(message)
    except orjson.JSONDecodeError:
        raise _invalid("Message Structure - JSON message body failed to parse") from None
    if not isinstance(parsed, dict):
        raise _invalid("Message Structure - JSON message body failed to parse")
    if "default" not in parsed:
        raise _invalid("Message Structure - No default entry in JSON message body")
    if not all(isinstance(value, str) for value in parsed.values()):
        raise _invalid("Message Structure - every protocol's message must be a string")


def _check_subject(subject: str) -> None:
    printable = all(" " <= char <= "~" for char in subject)
    if not subject or len(subject) > _MAX_SUBJECT_CHARS or not printable or subject[0] == " ":
        raise _invalid("Subject")
