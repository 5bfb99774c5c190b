"""The decision topic: found once at start-up, then one SNS Publish per notification.

``BROKER_DECISION_TOPIC`` names the topic (a name or an ARN); ``resolve_topic`` turns it
into an ARN under the start-up retry budget, so that a missing topic stops the start
(and ``broker check`` reports it) instead of failing the first approval.  ``Topic.publish``
is what ``task.notify`` calls: the message is checked as SNS would check it before it is
sent, and AWS's errors are translated here, at the boundary, into the two the handler
sees (``NotificationFailed``: retried; ``TaskFailed(Broker.NotificationRefused)``: the
message can never be sent, the task fails at once).
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from broker.aws.errors import error_code, error_name
from broker.aws.protocols import SnsApi
from broker.aws.startup import StartupRetry
from broker.core.errors import (
    ConfigError,
    ErrorName,
    NotificationFailed,
    TaskFailed,
    TopicNotFound,
)
from broker.core.router import Router
from broker.core.settings import ENV_PREFIX, BrokerSettings

__all__ = [
    "MAX_MESSAGE_BYTES",
    "Topic",
    "encode_message",
    "open_topic",
    "resolve_topic",
    "sns_subject",
    "topic_needed",
]

#: SNS's limit on one message in UTF-8 bytes (for MessageStructure=json: the whole document).
MAX_MESSAGE_BYTES: Final = 262_144
#: SNS: a subject is printable ASCII, shorter than 100 characters.
_MAX_SUBJECT_CHARS: Final = 99
#: ListTopics pages looked through for a topic given by name (100 topics a page).
_MAX_PAGES: Final = 100
#: SNS refused the message itself: the same message will be refused again.
_REFUSED_CODES: Final = frozenset(
    {"InvalidParameter", "ParameterValueInvalid", "ValidationException"}
)
_SETTING: Final = f"{ENV_PREFIX}DECISION_TOPIC"

log = logging.getLogger("broker.sns")


@dataclass(frozen=True, slots=True)
class Topic:
    """The resolved decision topic and the SNS client that publishes to it."""

    sns: SnsApi
    arn: str

    async def publish(self, message: Mapping[str, str], subject: str | None = None) -> str:
        """Publish ``message`` (one string per protocol, ``default`` required) with
        ``MessageStructure=json``; the MessageId.

        ``subject`` (the e-mail subject) is made one SNS accepts (``sns_subject``).
        Raises ``TaskFailed(Broker.NotificationRefused)`` for a message SNS cannot take,
        ``NotificationFailed`` for anything else (throttled, unavailable, denied): the
        handler's attempt is retried and the message comes back.
        """
        document = encode_message(message)
        params: dict[str, Any] = {
            "TopicArn": self.arn,
            "Message": document,
            "MessageStructure": "json",
        }
        cleaned = sns_subject(subject)
        if cleaned is not None:
            params["Subject"] = cleaned
        try:
            response = await self.sns.publish(**params)
        except Exception as exc:  # every AWS failure is translated here
            code = error_name(exc)
            if error_code(exc) in _REFUSED_CODES:
                raise TaskFailed(
                    ErrorName.NOTIFICATION_REFUSED,
                    f"SNS refused the notification to {self.arn} ({code})",
                ) from exc
            # The message and the token are not in this text: only the topic and the code.
            raise NotificationFailed(
                f"SNS Publish to {self.arn} failed ({code}); the task is retried"
            ) from exc
        return str(response["MessageId"])


def encode_message(message: Mapping[str, str]) -> str:
    """The MessageStructure=json document, checked as SNS checks it (a handler bug fails
    the task with ``Broker.NotificationRefused`` rather than an SNS round trip)."""
    if "default" not in message:
        raise _refused("the message has no 'default' entry (SNS requires one)")
    wrong = sorted(key for key, value in message.items() if not isinstance(value, str))
    if wrong or not all(isinstance(key, str) for key in message):
        raise _refused(f"every protocol's message must be a string (not: {', '.join(wrong)})")
    document = orjson.dumps(dict(message)).decode()
    size = len(document.encode())
    if size > MAX_MESSAGE_BYTES:
        raise _refused(f"the message is {size} bytes, over SNS's {MAX_MESSAGE_BYTES}")
    return document


def _refused(why: str) -> TaskFailed:
    return TaskFailed(ErrorName.NOTIFICATION_REFUSED, f"notification not sent: {why}")


_BLANKS = re.compile(r"\s+")


def _ascii(char: str) -> str:
    if " " <= char <= "~":
        return char
    if unicodedata.combining(char):
        return ""  # the accent of a letter NFKD took apart
    if char.isspace() or not char.isprintable():
        return " "
    return "?"


def sns_subject(text: str | None) -> str | None:
    """``text`` as a subject SNS accepts: ASCII (accents dropped, other characters
    replaced by ``?``), one line, at most 99 characters; ``None`` if nothing is left."""
    if text is None:
        return None
    folded = unicodedata.normalize("NFKD", text)
    line = _BLANKS.sub(" ", "".join(_ascii(char) for char in folded)).strip()
    if len(line) > _MAX_SUBJECT_CHARS:
        line = line[: _MAX_SUBJECT_CHARS - 3].rstrip() + "..."
    return line or None


async def resolve_topic(sns: SnsApi, name_or_arn: str, retry: StartupRetry) -> Topic:
    """The topic ``BROKER_DECISION_TOPIC`` names, by ARN (GetTopicAttributes) or by name
    (ListTopics).  ``TopicNotFound`` naming the setting if it does not exist."""
    subject = f"{_SETTING} topic {name_or_arn!r}"
    if name_or_arn.startswith("arn:"):
        await retry.call(
            lambda: sns.get_topic_attributes(TopicArn=name_or_arn),
            subject=subject,
            api="GetTopicAttributes",
            client=sns,
            not_found=TopicNotFound,
        )
        return Topic(sns, name_or_arn)
    next_token: str | None = None
    for _ in range(_MAX_PAGES):
        params = {"NextToken": next_token} if next_token else {}
        page = await retry.call(
            functools.partial(sns.list_topics, **params),
            subject=subject,
            api="ListTopics",
            client=sns,
            not_found=TopicNotFound,
        )
        for entry in page.get("Topics", ()):
            arn = str(entry.get("TopicArn", ""))
            if arn.rsplit(":", 1)[-1] == name_or_arn:
                return Topic(sns, arn)
        next_token = page.get("NextToken")
        if not next_token:
            break
    region = getattr(getattr(sns, "meta", None), "region_name", None)
    in_region = f" in region {region}" if isinstance(region, str) else ""
    raise TopicNotFound(
        f"{subject} not found{in_region} (no topic of that name in ListTopics; create it, "
        "or give its ARN)"
    )


async def open_topic(
    sns: SnsApi | None, settings: BrokerSettings, retry: StartupRetry, router: Router
) -> Topic | None:
    """The decision topic of ``settings`` found (start-up; ``broker check``), else None.

    Looked up only when a route of ``router`` has ``notify=True``: a topic nothing
    publishes to must not stop a start (nor need ``sns:*`` permissions).
    """
    if not settings.decision_topic:
        return None
    if not topic_needed(router):
        log.info(
            "%s is set but no handler has notify=True: the topic is not looked up or used",
            _SETTING,
        )
        return None
    if sns is None:
        # A client factory of the caller's own (tests) that brought no SNS.
        raise ConfigError(f"{_SETTING} is set but the AWS clients given have no SNS client")
    return await resolve_topic(sns, settings.decision_topic, retry)


def topic_needed(router: Router) -> bool:
    """Whether a handler of ``router`` may call ``task.notify()`` (``notify=True``)."""
    return any(route.options.notify for route in router)
