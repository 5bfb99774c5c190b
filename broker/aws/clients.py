"""The real AWS clients: aioboto3 for SQS, Step Functions, SNS and DynamoDB, and the lean
hot path.

By default (``BROKER_AWS_CLIENT=lean``) the hot calls (ReceiveMessage, DeleteMessageBatch,
ChangeMessageVisibility(Batch), SendTaskSuccess/Failure/Heartbeat) go through
``broker.aws.leansqs`` / ``broker.aws.leansfn`` on what the aiobotocore clients resolved;
every other call goes through aiobotocore.  ``BROKER_AWS_CLIENT=botocore`` is the escape
hatch: every call through aiobotocore.  The protocols the clients satisfy are in
``broker.aws.protocols``, how their errors are read in ``broker.aws.errors``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Final, cast

import aioboto3
import botocore
from aiobotocore.config import AioConfig
from botocore.exceptions import NoCredentialsError

from broker._version import __version__
from broker.aws.lean import LeanTransport
from broker.aws.leansfn import LeanSfn
from broker.aws.leansqs import LeanSqs
from broker.aws.protocols import AwsClients, DynamoApi, SfnApi, SnsApi, SqsApi
from broker.core.errors import ConfigError
from broker.core.settings import BrokerSettings

__all__ = [
    "ACTIVITY_POLL_READ_TIMEOUT_S",
    "COMPLETION_READ_TIMEOUT_S",
    "lean_clients",
    "open_clients",
]

log = logging.getLogger("broker.aws")

#: GetActivityTask answers within 60 s; the read timeout must be longer.
ACTIVITY_POLL_READ_TIMEOUT_S: Final = 70
#: SendTaskSuccess / Failure / Heartbeat.  It need not fit in any queue's visibility
#: timeout: the visibility keeper holds a message invisible for the whole completion,
#: every try of it (sqs.visibility).  It only bounds one call that hangs, and it is long
#: enough for the 20 s answers seen from a struggling Step Functions: a call cut off
#: client-side may still have taken effect, and a retry would then only be answered
#: "task closed".
COMPLETION_READ_TIMEOUT_S: Final = 30


@asynccontextmanager
async def open_clients(settings: BrokerSettings) -> AsyncIterator[AwsClients]:
    """Open one SQS and one Step Functions client for the broker's lifetime (an SNS client
    when a decision topic is configured, a DynamoDB client when an idempotency table is)."""
    session = aioboto3.Session(region_name=settings.aws_region)
    if session.region_name is None:
        # botocore would raise NoRegionError from deep inside client creation.
        raise ConfigError(
            "AWS_REGION: no AWS region set (set AWS_REGION or BROKER_AWS_REGION, or a "
            "region in the AWS config file's profile)"
        )
    longest_wait_s = max((queue.wait_time_s for queue in settings.queues), default=20)
    sqs_config = AioConfig(
        # The long poll holds the connection open for up to WaitTimeSeconds.
        read_timeout=longest_wait_s + 10,
        connect_timeout=5,
        max_pool_connections=max(10, 2 * len(settings.queues) + 8),
        retries={"mode": "standard", "total_max_attempts": 3},
    )
    sfn_config = AioConfig(
        read_timeout=COMPLETION_READ_TIMEOUT_S,
        connect_timeout=5,
        max_pool_connections=settings.completion_concurrency + 8,
        # Completions are retried by the broker itself, under its rate limit.
        retries={"mode": "standard", "total_max_attempts": 1},
    )
    pollers = sum(activity.pollers for activity in settings.activities)
    poll_config = AioConfig(
        # GetActivityTask holds the connection for up to 60 s before answering "no task";
        # botocore's default 60 s read timeout would cut that off.  Completions keep
        # their short timeout on the other client.
        read_timeout=ACTIVITY_POLL_READ_TIMEOUT_S,
        connect_timeout=5,
        max_pool_connections=max(10, pollers + 2),
        retries={"mode": "standard", "total_max_attempts": 1},
    )
    endpoint = settings.aws_endpoint_url
    async with (
        session.client("sqs", config=sqs_config, endpoint_url=endpoint) as sqs,
        session.client("stepfunctions", config=sfn_config, endpoint_url=endpoint) as sfn,
        session.client("stepfunctions", config=poll_config, endpoint_url=endpoint) as sfn_poll,
        AsyncExitStack() as optional,
    ):
        await _log_credential_source(session)
        sns: SnsApi | None = None
        if settings.decision_topic:
            # One Publish per approval: botocore's client with its standard retries
            # is enough; what still fails is retried with the handler's attempt.
            sns_config = AioConfig(
                read_timeout=10,
                connect_timeout=5,
                retries={"mode": "standard", "total_max_attempts": 3},
            )
            sns = cast(
                SnsApi,
                await optional.enter_async_context(
                    session.client("sns", config=sns_config, endpoint_url=endpoint)
                ),
            )
        dynamodb: DynamoApi | None = None
        if settings.idempotency_table:
            # Only idempotent=True routes call it (two writes per task, a read per
            # duplicate): botocore's client and its standard retries are enough there;
            # what still fails is handled by core.idempotency (fail closed).
            dynamodb_config = AioConfig(
                read_timeout=5,
                connect_timeout=5,
                max_pool_connections=settings.concurrency + 8,
                retries={"mode": "standard", "total_max_attempts": 3},
            )
            dynamodb = cast(
                DynamoApi,
                await optional.enter_async_context(
                    session.client("dynamodb", config=dynamodb_config, endpoint_url=endpoint)
                ),
            )
        if settings.aws_client == "botocore":
            yield AwsClients(
                sqs=cast(SqsApi, sqs),
                sfn=cast(SfnApi, sfn),
                sfn_poll=cast(SfnApi, sfn_poll),
                sns=sns,
                dynamodb=dynamodb,
            )
            return
        lean = await lean_clients(session, sqs, sfn)
        yield AwsClients(
            sqs=lean.sqs,
            sfn=lean.sfn,
            sfn_poll=cast(SfnApi, sfn_poll),
            sns=sns,
            dynamodb=dynamodb,
        )


async def _log_credential_source(session: Any) -> None:
    """Where the credentials come from, once, at DEBUG: botocore's own INFO line about it
    is held back (``observability.logs``).  The method's name only, never a key."""
    if not log.isEnabledFor(logging.DEBUG):
        return
    # Typed as synchronous in the stubs; aioboto3 returns a coroutine.
    credentials: Any = await cast(Awaitable[Any], session.get_credentials())
    method = getattr(credentials, "method", None) if credentials is not None else None
    log.debug("AWS credentials: %s", method or "none found")


async def lean_clients(session: Any, sqs: Any, sfn: Any) -> AwsClients:
    """The lean SQS and Step Functions clients over two open aiobotocore clients.

    They send on the clients' own HTTP sessions, so they live as long as those clients.
    """
    # Typed as synchronous in the stubs; aioboto3 returns a coroutine.
    credentials: Any = await cast(Awaitable[Any], session.get_credentials())

    async def fresh() -> Any:
        if credentials is None:
            # What botocore raises when it signs without credentials; the start-up
            # lookups (botocore) meet it first and say so (broker.aws.startup).
            raise NoCredentialsError
        return await credentials.get_frozen_credentials()

    user_agent = f"sfn-callback-broker/{__version__} botocore/{botocore.__version__} lean"
    sqs_transport = await LeanTransport.of(sqs, fresh, user_agent=user_agent)
    sfn_transport = await LeanTransport.of(sfn, fresh, user_agent=user_agent)
    return AwsClients(
        sqs=cast(SqsApi, LeanSqs(sqs_transport, fallback=sqs)),
        sfn=cast(SfnApi, LeanSfn(sfn_transport, fallback=sfn)),
    )
