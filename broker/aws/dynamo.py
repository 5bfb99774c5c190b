"""The idempotency table: checked at start-up and by ``broker check``, created on request.

``BROKER_IDEMPOTENCY_TABLE`` names it (a name or an ARN).  It must have one string
partition key ``id`` and no sort key; its TTL should be on ``expires_at`` (without it
records are never deleted: the broker still ignores expired ones, but they cost
storage).  ``create_table`` makes one (on-demand billing, TTL on): ``broker idempotency
create-table NAME``; deploy/idempotency/ has the same table for CloudFormation and
Terraform.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import anyio

from broker.aws.errors import error_code
from broker.aws.protocols import DynamoApi
from broker.aws.startup import StartupRetry
from broker.core.errors import ConfigError, TableNotFound
from broker.core.idempotency import KEY_ATTRIBUTE, TTL_ATTRIBUTE, IdempotencyStore
from broker.core.settings import ENV_PREFIX, BrokerSettings

__all__ = [
    "TABLE_DEFINITION",
    "TableState",
    "create_table",
    "describe_table",
    "open_store",
    "table_problems",
]

log = logging.getLogger("broker.aws")

_SETTING: Final = f"{ENV_PREFIX}IDEMPOTENCY_TABLE"
#: CreateTable's parameters besides the name: deploy/idempotency/ defines the same table.
TABLE_DEFINITION: Final[Mapping[str, Any]] = {
    "AttributeDefinitions": [{"AttributeName": KEY_ATTRIBUTE, "AttributeType": "S"}],
    "KeySchema": [{"AttributeName": KEY_ATTRIBUTE, "KeyType": "HASH"}],
    # Traffic follows the handlers' (two writes a task): on-demand needs no sizing.
    "BillingMode": "PAY_PER_REQUEST",
}
#: CreateTable returns at once; the table takes seconds to become ACTIVE.
_ACTIVE_TIMEOUT_S: Final = 120.0


@dataclass(frozen=True, slots=True)
class TableState:
    """What DescribeTable and DescribeTimeToLive said about the table."""

    arn: str
    status: str
    key_schema: tuple[tuple[str, str, str], ...]  # (name, HASH/RANGE, S/N/B)
    ttl_attribute: str | None
    ttl_status: str

    def problems(self) -> list[str]:
        """Why the broker cannot use the table (the key), or should not (the TTL)."""
        found: list[str] = []
        if self.key_schema != ((KEY_ATTRIBUTE, "HASH", "S"),):
            keys = ", ".join(f"{n} {k} {t}" for n, k, t in self.key_schema) or "none"
            found.append(
                f"its key must be one string partition key {KEY_ATTRIBUTE!r} and no sort key "
                f"(found: {keys})"
            )
        if self.ttl_attribute != TTL_ATTRIBUTE or self.ttl_status not in ("ENABLED", "ENABLING"):
            found.append(
                f"its TTL is not on {TTL_ATTRIBUTE!r} (found: {self.ttl_attribute or 'none'}, "
                f"{self.ttl_status}): records would never be deleted"
            )
        return found

    def line(self) -> str:
        return f"{self.arn}, {self.status}, key {KEY_ATTRIBUTE} (S), TTL on {self.ttl_attribute}"


async def describe_table(dynamo: DynamoApi, table: str, retry: StartupRetry) -> TableState:
    """The table's key schema and TTL; ``TableNotFound`` naming the setting."""
    subject = f"{_SETTING} table {table!r}"
    described = await retry.call(
        lambda: dynamo.describe_table(TableName=table),
        subject=subject,
        api="DescribeTable",
        client=dynamo,
        not_found=TableNotFound,
    )
    ttl = await retry.call(
        lambda: dynamo.describe_time_to_live(TableName=table),
        subject=subject,
        api="DescribeTimeToLive",
        client=dynamo,
        not_found=TableNotFound,
    )
    return _state(described["Table"], ttl.get("TimeToLiveDescription", {}))


def _state(table: Mapping[str, Any], ttl: Mapping[str, Any]) -> TableState:
    types = {a["AttributeName"]: a["AttributeType"] for a in table.get("AttributeDefinitions", ())}
    keys = tuple(
        (k["AttributeName"], k["KeyType"], types.get(k["AttributeName"], "?"))
        for k in table.get("KeySchema", ())
    )
    return TableState(
        arn=str(table.get("TableArn", table.get("TableName", "?"))),
        status=str(table.get("TableStatus", "?")),
        key_schema=keys,
        ttl_attribute=ttl.get("AttributeName"),
        ttl_status=str(ttl.get("TimeToLiveStatus", "DISABLED")),
    )


async def table_problems(dynamo: DynamoApi, table: str, retry: StartupRetry) -> TableState:
    """``broker check``: the table's state; ``ConfigError`` listing what does not fit."""
    state = await describe_table(dynamo, table, retry)
    problems = state.problems()
    if problems:
        raise ConfigError(f"{_SETTING} table {table!r}: " + "; ".join(problems))
    return state


async def open_store(
    dynamo: DynamoApi | None, settings: BrokerSettings, retry: StartupRetry
) -> IdempotencyStore | None:
    """The idempotency store of ``settings`` (start-up), its table checked; else None.

    A key that does not fit stops the start (every claim would fail); a TTL that is not
    on is only a warning: the broker reads ``expires_at`` itself.
    """
    table = settings.idempotency_table
    if not table:
        return None
    if dynamo is None:
        # A client factory of the caller's own (tests) that brought no DynamoDB.
        raise ConfigError(f"{_SETTING} is set but the AWS clients given have no DynamoDB client")
    state = await describe_table(dynamo, table, retry)
    for problem in state.problems():
        if problem.startswith("its key"):
            raise ConfigError(f"{_SETTING} table {table!r}: {problem}")
        log.warning("%s table %r: %s", _SETTING, table, problem)
    return IdempotencyStore(dynamo, table, ttl_s=settings.idempotency_ttl_s)


async def create_table(dynamo: DynamoApi, table: str) -> tuple[TableState, bool]:
    """Create the table (on-demand, TTL on ``expires_at``) unless it exists; its state
    and whether it was created.  What an existing table lacks is in ``problems()``."""
    try:
        await dynamo.create_table(TableName=table, **TABLE_DEFINITION)
    except Exception as exc:  # only "it exists" is an answer here
        if error_code(exc) != "ResourceInUseException":
            raise
        return await describe_table(dynamo, table, StartupRetry()), False
    with anyio.fail_after(_ACTIVE_TIMEOUT_S):
        # DynamoDB has no "table ready" event to wait on: DescribeTable once a second.
        while (await dynamo.describe_table(TableName=table))["Table"]["TableStatus"] != "ACTIVE":  # noqa: ASYNC110
            await anyio.sleep(1)
    await dynamo.update_time_to_live(
        TableName=table,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
    )
    return await describe_table(dynamo, table, StartupRetry()), True
