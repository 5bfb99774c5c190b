"""SNS: the fake's validation (what AWS refuses), the decision topic's resolution at
start-up, and ``Topic.publish`` translating AWS's errors at the boundary."""

from __future__ import annotations

import orjson
import pytest
from botocore.exceptions import EndpointConnectionError

from broker.aws.sns import MAX_MESSAGE_BYTES, Topic, encode_message, resolve_topic, sns_subject
from broker.aws.startup import StartupRetry
from broker.core.errors import (
    AwsAccessDenied,
    ErrorName,
    NotificationFailed,
    TaskFailed,
    TopicNotFound,
)
from broker.testing import FakeSns, client_error
from broker.testing.sns import PublishedMessage

THROTTLED = client_error("Throttled", "Rate exceeded", status=429, op="Publish")
INTERNAL = client_error("InternalError", status=500, op="Publish")


def _json(message: object) -> str:
    return orjson.dumps(message).decode()


# -- FakeSns: what AWS refuses


async def test_fake_records_a_json_structured_message() -> None:
    sns = FakeSns()
    arn = sns.add_topic("decisions")
    answer = await sns.publish(
        TopicArn=arn,
        Message=_json({"default": "d", "email": "e"}),
        MessageStructure="json",
        Subject="Refund 42",
    )
    [published] = sns.published
    assert published == PublishedMessage(
        arn, published.message, "Refund 42", "json", answer["MessageId"]
    )
    assert published.protocols == {"default": "d", "email": "e"}
    assert published.default == "d"
    assert sns.messages("decisions") == [published]


@pytest.mark.parametrize(
    ("message", "detail"),
    [
        (_json({"email": "no default"}), "No default entry"),
        ("not json", "failed to parse"),
        (_json(["default"]), "failed to parse"),
        (_json({"default": "d", "email": {"nested": 1}}), "must be a string"),
        (_json({"default": 1}), "must be a string"),
        ("", "Empty message"),
        (_json({"default": "x" * MAX_MESSAGE_BYTES}), "too long"),
    ],
)
async def test_fake_refuses_what_aws_refuses(message: str, detail: str) -> None:
    sns = FakeSns()
    arn = sns.add_topic("decisions")
    with pytest.raises(Exception, match=detail) as caught:
        await sns.publish(TopicArn=arn, Message=message, MessageStructure="json")
    assert getattr(caught.value, "response", {})["Error"]["Code"] == "InvalidParameter"
    assert sns.published == []


async def test_fake_takes_exactly_256_kib_and_plain_messages() -> None:
    sns = FakeSns()
    arn = sns.add_topic("decisions")
    envelope = len(_json({"default": ""}))
    await sns.publish(
        TopicArn=arn,
        Message=_json({"default": "x" * (MAX_MESSAGE_BYTES - envelope)}),
        MessageStructure="json",
    )
    await sns.publish(TopicArn=arn, Message="plain text, no structure")
    assert [m.structure for m in sns.published] == ["json", None]
    assert sns.published[1].protocols == {"default": "plain text, no structure"}


@pytest.mark.parametrize("subject", ["", " leading space", "two\nlines", "é", "x" * 100])
async def test_fake_refuses_a_subject_sns_would_refuse(subject: str) -> None:
    sns = FakeSns()
    arn = sns.add_topic("decisions")
    with pytest.raises(Exception, match="Subject"):
        await sns.publish(TopicArn=arn, Message="m", Subject=subject)


async def test_fake_unknown_topic_is_not_found_and_faults_are_injectable() -> None:
    sns = FakeSns()
    with pytest.raises(Exception, match="Topic does not exist"):
        await sns.publish(TopicArn=sns.arn_of("missing"), Message="m")
    arn = sns.add_topic("decisions")
    sns.fail_next("publish", THROTTLED)
    with pytest.raises(Exception, match="Rate exceeded"):
        await sns.publish(TopicArn=arn, Message="m")
    await sns.publish(TopicArn=arn, Message="m")
    assert sns.calls["publish"] == 3
    assert len(sns.published) == 1


async def test_fake_topics_list_in_pages_and_subscriptions_are_recorded() -> None:
    sns = FakeSns()
    for n in range(150):
        sns.add_topic(f"t{n}")
    first = await sns.list_topics()
    second = await sns.list_topics(NextToken=first["NextToken"])
    assert len(first["Topics"]) == 100
    assert len(second["Topics"]) == 50
    assert "NextToken" not in second
    arn = (await sns.create_topic(Name="t3"))["TopicArn"]
    assert arn == sns.arn_of("t3")  # idempotent, as on AWS
    await sns.subscribe(
        TopicArn=arn,
        Protocol="sqs",
        Endpoint="arn:aws:sqs:us-east-1:000000000000:inbox",
        Attributes={"RawMessageDelivery": "true"},
    )
    attributes = await sns.get_topic_attributes(TopicArn=arn)
    assert attributes["Attributes"]["SubscriptionsConfirmed"] == "1"


# -- resolving BROKER_DECISION_TOPIC at start-up


async def test_a_topic_name_resolves_to_its_arn_across_pages() -> None:
    sns = FakeSns()
    for n in range(120):
        sns.add_topic(f"other-{n}")
    arn = sns.add_topic("decisions")
    topic = await resolve_topic(sns, "decisions", StartupRetry(5))
    assert topic.arn == arn
    assert sns.calls["list_topics"] == 2


async def test_a_topic_arn_is_checked_with_get_topic_attributes() -> None:
    sns = FakeSns()
    arn = sns.add_topic("decisions")
    assert (await resolve_topic(sns, arn, StartupRetry(5))).arn == arn
    assert sns.calls["get_topic_attributes"] == 1


@pytest.mark.parametrize("given", ["missing", "arn:aws:sns:us-east-1:000000000000:missing"])
async def test_a_missing_topic_is_a_start_up_error_naming_the_setting(given: str) -> None:
    sns = FakeSns()
    sns.add_topic("missing-not")
    with pytest.raises(TopicNotFound, match=r"BROKER_DECISION_TOPIC topic .*missing.* not found"):
        await resolve_topic(sns, given, StartupRetry(5))


async def test_a_throttled_lookup_is_retried_and_a_denied_one_says_so() -> None:
    sns = FakeSns()
    sns.add_topic("decisions")
    sns.fail_next("list_topics", client_error("Throttled", status=429), times=2)
    await resolve_topic(sns, "decisions", StartupRetry(5, base_delay_s=0.01))
    assert sns.calls["list_topics"] == 3
    sns.fail_next("list_topics", client_error("AuthorizationError", status=403))
    with pytest.raises(AwsAccessDenied, match=r"BROKER_DECISION_TOPIC.*access denied"):
        await resolve_topic(sns, "decisions", StartupRetry(5))


# -- Topic.publish: the message checked, the errors translated


async def test_publish_sends_a_json_structured_message_and_returns_its_id() -> None:
    sns = FakeSns()
    topic = Topic(sns, sns.add_topic("decisions"))
    message_id = await topic.publish({"default": "{}", "email": "text"}, subject="Réfund #42\n")
    [published] = sns.published
    assert published.message_id == message_id
    assert published.structure == "json"
    assert published.protocols == {"default": "{}", "email": "text"}
    assert published.subject == "Refund #42"


@pytest.mark.parametrize("error", [THROTTLED, INTERNAL, EndpointConnectionError(endpoint_url="x")])
async def test_an_unavailable_sns_raises_notification_failed_which_is_retried(
    error: Exception,
) -> None:
    sns = FakeSns()
    topic = Topic(sns, sns.add_topic("decisions"))
    sns.fail_next("publish", error)
    with pytest.raises(
        NotificationFailed, match=r"SNS Publish to arn:aws:sns:.*decisions failed"
    ) as caught:
        await topic.publish({"default": "{}"})
    assert caught.value.__cause__ is error
    assert not isinstance(caught.value, TaskFailed)


async def test_a_refused_message_fails_the_task_with_notification_refused() -> None:
    sns = FakeSns()
    topic = Topic(sns, sns.add_topic("decisions"))
    sns.fail_next("publish", client_error("InvalidParameter", "Invalid parameter: x"))
    with pytest.raises(TaskFailed) as caught:
        await topic.publish({"default": "{}"})
    assert caught.value.error == ErrorName.NOTIFICATION_REFUSED


@pytest.mark.parametrize(
    ("message", "why"),
    [
        ({"email": "e"}, "no 'default' entry"),
        ({"default": "d", "sqs": 3}, "must be a string .*sqs"),
        ({"default": "x" * MAX_MESSAGE_BYTES}, "over SNS's 262144"),
    ],
)
def test_a_message_sns_cannot_take_is_refused_before_any_call(
    message: dict[str, object], why: str
) -> None:
    with pytest.raises(TaskFailed, match=why) as caught:
        encode_message(message)  # type: ignore[arg-type]
    assert caught.value.error == ErrorName.NOTIFICATION_REFUSED


@pytest.mark.parametrize(
    ("text", "subject"),
    [
        (None, None),
        ("   ", None),
        ("Approve refund #42", "Approve refund #42"),
        ("Café\tbill\r\n€5", "Cafe bill ?5"),
        ("x" * 150, "x" * 96 + "..."),
    ],
)
def test_subjects_are_made_ones_sns_accepts(text: str | None, subject: str | None) -> None:
    assert sns_subject(text) == subject
