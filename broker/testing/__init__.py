"""In-memory SQS, Step Functions, SNS and DynamoDB for testing handlers and the broker without AWS.

The fakes keep the semantics the broker relies on — visibility timeouts, receive
counts, receipt handles, long polls, per-entry batch failures, a closed task answering
``TaskTimedOut``, and the size limits real Step Functions enforces (which neither moto
nor LocalStack does) — and can inject faults and latency.

For handler authors::

    from broker.testing import TestBroker

    async def test_purchase() -> None:
        async with TestBroker(router) as broker:
            token = await broker.start_task({"TransactionType": "PURCHASE"}, message_type="buy")
            await broker.wait_idle()
        assert broker.sfn.outcomes[token].status == "success"

The whole kit, with the pytest configuration it needs and examples that run as tests:
docs/testing.md.
"""

from broker.testing._faults import client_error
from broker.testing.broker import TestBroker
from broker.testing.dynamodb import FakeDynamoDb
from broker.testing.sfn import FakeSfn, TaskOutcome
from broker.testing.sns import FakeSns, PublishedMessage
from broker.testing.sqs import FakeSqs

__all__ = [
    "FakeDynamoDb",
    "FakeSfn",
    "FakeSns",
    "FakeSqs",
    "PublishedMessage",
    "TaskOutcome",
    "TestBroker",
    "client_error",
]
