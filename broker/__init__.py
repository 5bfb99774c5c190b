"""Callback broker: SQS queues → typed async handlers → Step Functions task completions.

Public API::

    from broker import Router, Task, TaskFailed

    router = Router()

    @router.handler("purchase")
    async def purchase(task: Task[PurchaseInput]) -> dict[str, str]:
        ...

A handler can also hand its task to a person: ``task.decision_links(...)`` on a
``decisions=True`` route, then ``return Deferred()`` (docs/decisions.md).
"""

from __future__ import annotations

from broker._version import __version__ as __version__
from broker.core.errors import (
    ActivityNotFound,
    AwsAccessDenied,
    AwsUnavailable,
    BrokerError,
    ConfigError,
    DecisionsNotConfigured,
    ErrorName,
    NonRetryable,
    QueueNotFound,
    RegistrationError,
    RetryLater,
    StartupError,
    TaskClosed,
    TaskFailed,
)
from broker.core.plugins import ENTRY_POINT_GROUP, build_router
from broker.core.router import HandlerOptions, Route, Router
from broker.core.settings import ActivitySettings, BrokerSettings, QueueSettings, load_settings
from broker.core.task import Task
from broker.core.verdict import Deferred
from broker.decisions.links import DecisionLinks
from broker.observability.stats import Outcome
from broker.service import Broker

__all__ = [
    "ENTRY_POINT_GROUP",
    "ActivityNotFound",
    "ActivitySettings",
    "AwsAccessDenied",
    "AwsUnavailable",
    "Broker",
    "BrokerError",
    "BrokerSettings",
    "ConfigError",
    "DecisionLinks",
    "DecisionsNotConfigured",
    "Deferred",
    "ErrorName",
    "HandlerOptions",
    "NonRetryable",
    "Outcome",
    "QueueNotFound",
    "QueueSettings",
    "RegistrationError",
    "RetryLater",
    "Route",
    "Router",
    "StartupError",
    "Task",
    "TaskClosed",
    "TaskFailed",
    "build_router",
    "load_settings",
]
