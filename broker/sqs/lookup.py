"""Finding a configured queue at start-up: its URL, its attributes, its dead-letter queue.

Every call goes through the start-up ``StartupRetry`` (transient errors retried up to
the deadline; anything else one line, ``describe_aws_error``).  The composition root
(``service``), ``broker check`` and ``broker redrive`` all look queues up here.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.aws.protocols import SqsApi
from broker.aws.startup import StartupRetry, describe_aws_error
from broker.core.errors import QueueNotFound
from broker.core.settings import QueueSettings

__all__ = ["ResolvedQueue", "queue_depth", "resolve_queue", "resolve_queue_url"]


@dataclass(frozen=True, slots=True)
class ResolvedQueue:
    """A configured queue as found at start-up."""

    url: str
    attributes: dict[str, str]
    dead_letter_url: str | None


async def resolve_queue(sqs: SqsApi, queue: QueueSettings, retry: StartupRetry) -> ResolvedQueue:
    """Find a queue and its dead-letter queue, as ``run`` does (``check`` reuses this)."""
    url = await resolve_queue_url(sqs, queue.name, retry=retry)
    attributes = await _queue_attributes(sqs, url, f"queue {queue.name!r}", retry)
    dead_letter_url = None
    if queue.dead_letter_queue:
        subject = f"dead-letter queue {queue.dead_letter_queue!r} (of queue {queue.name!r})"
        dead_letter_url = await resolve_queue_url(
            sqs, queue.dead_letter_queue, retry=retry, subject=subject
        )
        if dead_letter_url == queue.dead_letter_queue:
            # Given as a URL, nothing looked it up yet: a typo would surface only at the
            # first poison message, as a copy that cannot be made.
            await _queue_attributes(sqs, dead_letter_url, subject, retry)
    return ResolvedQueue(url, attributes, dead_letter_url)


async def resolve_queue_url(
    sqs: SqsApi,
    name_or_url: str,
    *,
    retry: StartupRetry | None = None,
    subject: str | None = None,
) -> str:
    """A queue URL from a queue name or URL.  ``QueueNotFound`` if it does not exist.

    Transient errors are retried under ``retry`` (a fresh default budget if none);
    every other failure is a one-line ``StartupError`` naming the queue (or ``subject``).
    """
    if name_or_url.startswith(("https://", "http://")):
        return name_or_url
    response = await (retry or StartupRetry()).call(
        lambda: sqs.get_queue_url(QueueName=name_or_url),
        subject=subject or f"queue {name_or_url!r}",
        api="GetQueueUrl",
        client=sqs,
        not_found=QueueNotFound,
    )
    return str(response["QueueUrl"])


async def _queue_attributes(
    sqs: SqsApi, url: str, subject: str, retry: StartupRetry
) -> dict[str, str]:
    response = await retry.call(
        lambda: sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"]),
        subject=subject,
        api="GetQueueAttributes",
        client=sqs,
        not_found=QueueNotFound,
    )
    return dict(response.get("Attributes", {}))


async def queue_depth(sqs: SqsApi, url: str, name: str) -> int:
    """ApproximateNumberOfMessages, in one try; ``QueueNotFound`` if it cannot be read.

    For ``broker redrive``, which must not move anything when a queue is missing.
    """
    try:
        response = await sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
        )
    except Exception as exc:
        error = describe_aws_error(exc, f"queue {name!r}", api="GetQueueAttributes", client=sqs)
        raise QueueNotFound(str(error)) from exc
    return int(response.get("Attributes", {}).get("ApproximateNumberOfMessages", 0))
