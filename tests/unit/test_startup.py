"""Start-up lookups: transient errors are retried, every other failure reads as what it is.

The fakes script the failures (the loopback-stub run in tests/faults/test_startup_faults.py
shows the same against real HTTP); the messages are the ones ``broker run`` prints.
"""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError, NoCredentialsError

from broker import ActivityNotFound, ActivitySettings, QueueNotFound, QueueSettings
from broker.aws.startup import StartupRetry
from broker.core.errors import AwsAccessDenied, AwsUnavailable
from broker.service import Broker
from broker.testing import FakeSfn, FakeSqs, TestBroker, client_error
from handlers.seeds import router as seed_router

from .conftest import make_settings

THROTTLED = client_error("ThrottlingException", status=400)
SQS_THROTTLED = client_error("RequestThrottled", status=400)
INTERNAL = client_error("InternalFailure", status=500)


async def _start(tb: TestBroker) -> None:
    async with tb:
        assert tb.broker.readiness().ok


def _queue_settings(**overrides: Any) -> Any:
    queue = QueueSettings(name="tasks", wait_time_s=1, dead_letter_queue="tasks-dlq")
    return make_settings(queue, **overrides)


async def test_transient_errors_on_every_start_up_call_are_retried() -> None:
    sqs, sfn = FakeSqs(), FakeSfn(activity_poll_s=0.1)
    activities = (
        ActivitySettings(name="listed", handler="verify"),
        ActivitySettings(name="made", handler="verify", create_if_missing=True),
        ActivitySettings(
            name="arn:aws:states:us-east-1:000000000000:activity:described", handler="verify"
        ),
    )
    settings = _queue_settings(activities=activities)
    tb = TestBroker(seed_router, settings, sqs=sqs, sfn=sfn)
    sfn.add_activity("described")
    sqs.fail_next("get_queue_url", SQS_THROTTLED, times=2)
    sqs.fail_next("get_queue_attributes", INTERNAL)
    sfn.fail_next("list_activities", THROTTLED, times=2)
    sfn.fail_next("create_activity", INTERNAL)
    sfn.fail_next("describe_activity", TimeoutError())
    await _start(tb)
    # tasks: 2 failures + 1; tasks-dlq: 1.  The Step Functions client makes one attempt
    # per call, so these retries are the broker's own.
    assert sqs.calls["get_queue_url"] == 4
    assert sqs.calls["get_queue_attributes"] == 2
    assert sfn.calls["list_activities"] == 3
    assert sfn.calls["create_activity"] == 2
    assert sfn.calls["describe_activity"] == 2


class _WatchedSqs(FakeSqs):
    """Records whether the broker said it was ready at each GetQueueUrl."""

    broker: Broker | None = None

    def __init__(self) -> None:
        super().__init__()
        self.ready_at_call: list[bool] = []

    async def get_queue_url(self, *, QueueName: str) -> dict[str, Any]:
        assert self.broker is not None
        self.ready_at_call.append(self.broker.readiness().ok)
        return await super().get_queue_url(QueueName=QueueName)


async def test_not_ready_while_start_up_retries() -> None:
    sqs = _WatchedSqs()
    tb = TestBroker(seed_router, make_settings(), sqs=sqs)
    sqs.broker = tb.broker
    sqs.fail_next("get_queue_url", SQS_THROTTLED, times=3)
    await _start(tb)
    assert sqs.ready_at_call == [False] * 4
    assert tb.broker.readiness().checks == {"state": "draining"}


async def test_transient_errors_past_the_deadline_say_so() -> None:
    sqs = FakeSqs()
    tb = TestBroker(seed_router, make_settings(startup_timeout_s=0.4), sqs=sqs)
    sqs.fail_next("get_queue_url", SQS_THROTTLED, times=1000)
    with pytest.raises(AwsUnavailable) as caught:
        await _start(tb)
    message = str(caught.value)
    assert message.startswith("queue 'tasks': GetQueueUrl kept failing with a transient error")
    assert "(RequestThrottled); retried for 0." in message
    assert "BROKER_STARTUP_TIMEOUT_S" in message
    assert "not found" not in message
    assert 2 <= sqs.calls["get_queue_url"] < 20  # backed off, not spun


@pytest.mark.parametrize(
    "code",
    [
        "AccessDenied",
        "AccessDeniedException",
        "UnauthorizedOperation",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "ExpiredToken",
        "SignatureDoesNotMatch",
    ],
)
async def test_access_denied_names_the_code_and_is_not_retried(code: str) -> None:
    sqs = FakeSqs()
    tb = TestBroker(seed_router, make_settings(), sqs=sqs)
    sqs.fail_next("get_queue_url", client_error(code, status=403))
    with pytest.raises(AwsAccessDenied) as caught:
        await _start(tb)
    message = str(caught.value)
    assert message.startswith(f"queue 'tasks': access denied ({code} on GetQueueUrl)")
    assert "not found" not in message
    assert sqs.calls["get_queue_url"] == 1


async def test_access_denied_on_an_activity_lookup() -> None:
    sfn = FakeSfn()
    settings = make_settings(queues=(), activities=(ActivitySettings(name="a", handler="verify"),))
    tb = TestBroker(seed_router, settings, sfn=sfn)
    sfn.fail_next("list_activities", client_error("AccessDeniedException", status=400))
    with pytest.raises(AwsAccessDenied, match=r"activity 'a': access denied \(AccessDeniedExc"):
        await _start(tb)


@pytest.mark.parametrize("code", ["AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"])
async def test_a_missing_queue_reads_not_found(code: str) -> None:
    sqs = FakeSqs()
    tb = TestBroker(seed_router, make_settings(), sqs=sqs)
    sqs.fail_next("get_queue_url", client_error(code))
    with pytest.raises(QueueNotFound) as caught:
        await _start(tb)
    assert str(caught.value) == f"queue 'tasks' not found ({code})"
    assert sqs.calls["get_queue_url"] == 1


async def test_a_missing_dead_letter_queue_stops_the_start() -> None:
    sqs = FakeSqs()
    tb = TestBroker(seed_router, _queue_settings(), sqs=sqs)
    del sqs.queues[sqs.url_of("tasks-dlq")]
    with pytest.raises(QueueNotFound, match=r"dead-letter queue 'tasks-dlq' \(of queue 'tasks'\)"):
        await _start(tb)


async def test_a_dead_letter_queue_url_is_checked_too() -> None:
    sqs = FakeSqs()
    missing = "https://sqs.us-east-1.amazonaws.com/000000000000/typo-dlq"
    queue = QueueSettings(name="tasks", wait_time_s=1, dead_letter_queue=missing)
    tb = TestBroker(seed_router, make_settings(queue), sqs=sqs)
    del sqs.queues[missing]
    with pytest.raises(QueueNotFound) as caught:
        await _start(tb)
    expected = f"dead-letter queue {missing!r} (of queue 'tasks') not found"
    assert str(caught.value).startswith(expected)


async def test_a_missing_activity_arn_reads_not_found() -> None:
    arn = "arn:aws:states:us-east-1:000000000000:activity:gone"
    settings = make_settings(queues=(), activities=(ActivitySettings(name=arn, handler="verify"),))
    with pytest.raises(ActivityNotFound) as caught:
        await _start(TestBroker(seed_router, settings))
    assert str(caught.value) == f"activity {arn!r} not found (ActivityDoesNotExist)"


async def test_an_unknown_refusal_reads_not_found_or_not_accessible() -> None:
    sqs = FakeSqs()
    tb = TestBroker(seed_router, make_settings(), sqs=sqs)
    sqs.fail_next("get_queue_url", client_error("InvalidAddress"))
    with pytest.raises(QueueNotFound) as caught:
        await _start(tb)
    assert str(caught.value) == (
        "queue 'tasks' not found or not accessible (InvalidAddress on GetQueueUrl)"
    )


async def test_no_credentials_and_an_unreachable_endpoint_have_their_own_messages() -> None:
    retry = StartupRetry(0.3, base_delay_s=0.05)

    async def no_credentials() -> Any:
        raise NoCredentialsError()

    with pytest.raises(AwsAccessDenied, match=r"^no AWS credentials found calling GetQueueUrl"):
        await retry.call(
            no_credentials,
            subject="queue 'q'",
            api="GetQueueUrl",
            client=None,
            not_found=QueueNotFound,
        )

    calls = 0

    async def refused() -> Any:
        nonlocal calls
        calls += 1
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9/")

    with pytest.raises(AwsUnavailable) as caught:
        await retry.call(
            refused, subject="queue 'q'", api="GetQueueUrl", client=None, not_found=QueueNotFound
        )
    assert str(caught.value).startswith(
        "cannot reach http://127.0.0.1:9/ for queue 'q' (a transient error: "
        "EndpointConnectionError on GetQueueUrl); retried for 0."
    )
    assert calls > 1
