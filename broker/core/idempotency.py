"""The idempotency table: one item per task token, claimed, recorded, replayed.

``core.once`` decides what a claim means for a run of the handler; this module only
speaks DynamoDB (through ``aws.protocols.DynamoApi``).  One item per task::

    id           S  SHA-256 hex of the task token (never the token itself)
    state        S  "in_progress" or "done"
    claim        S  a random id of the one run that holds the claim (or recorded it)
    lease_until  N  epoch seconds (to the millisecond): an in-progress claim past it is
                    free to take; renewed while the run is alive
    expires_at   N  epoch seconds, the table's TTL attribute; an item past it is absent
    type         S  the message type (for a person reading the table)
    verdict      S  done items: "succeeded", "failed", "closed" or "deferred"
    output       S  succeeded: the output exactly as sent
    error, cause, outcome   S  failed: what SendTaskFailure sends, and the outcome kind
    reason       S  deferred: the handler's reason

Calls: a claim is one PutItem, conditioned on the item being absent, expired, or an
in-progress claim whose lease ran out; a refused claim reads the item (GetItem,
strongly consistent) to learn whether to replay a verdict or wait.  While the run is
alive its lease is renewed (UpdateItem, conditioned on still holding the claim in
progress).  The verdict is one UpdateItem conditioned on holding the claim, or on
nobody holding a live one (the lease lapsed and no run took it, or the run that took
it gave it back); a release (the handler asked for a retry) one DeleteItem
conditioned on holding the claim in progress.  DynamoDB's TTL deletes expired items
within days, not at once: every condition and read checks ``expires_at`` itself.

One notion of time: each call reads the clock once, and the number it sends as
``:now`` is the one its read of the item compares with (to the millisecond), so a
claim refused by the condition is never found free by the read that follows.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, TypeAlias, assert_never

from broker.aws.errors import error_code, error_name
from broker.aws.protocols import DynamoApi
from broker.core.verdict import Closed, Deferred, Failed, Succeeded
from broker.observability.stats import Outcome

__all__ = [
    "KEY_ATTRIBUTE",
    "TTL_ATTRIBUTE",
    "Claim",
    "Held",
    "IdempotencyStore",
    "Recorded",
    "Replay",
    "StoreUnavailable",
    "token_key",
]

#: The table's partition key (a string) and its TTL attribute (docs/fleet.md).
KEY_ATTRIBUTE: Final = "id"
TTL_ATTRIBUTE: Final = "expires_at"

_CONDITION_FAILED: Final = "ConditionalCheckFailedException"
_IN_PROGRESS: Final = "in_progress"
_DONE: Final = "done"
_NAMES: Final = {
    "#id": KEY_ATTRIBUTE,
    "#state": "state",
    "#lease": "lease_until",
    "#exp": TTL_ATTRIBUTE,
}
_FREE_TO_CLAIM: Final = (
    "attribute_not_exists(#id) OR #exp < :now OR (#state = :in_progress AND #lease < :now)"
)
#: A verdict is recorded by the run holding the claim, or by a run whose lease lapsed
#: while nobody took the task over (then it takes the claim back as it records).
_MAY_RECORD: Final = "#claim = :claim OR " + _FREE_TO_CLAIM
#: Attempts of a claim (or a record) that the item changed under: put, read, put again.
_ATTEMPTS: Final = 3

#: What a verdict is recorded as: only these are final (``Retry`` releases the claim).
Recorded: TypeAlias = Succeeded | Failed | Closed | Deferred


class StoreUnavailable(Exception):
    """The table could not be asked (throttled, unreachable, denied, unreadable item)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True, slots=True)
class Claim:
    """This run holds the task until ``lease_until`` (epoch seconds)."""

    key: str
    claim_id: str
    lease_until: float
    #: The claim was taken from a run whose lease had lapsed (a dead replica's, or
    #: one that could not renew): that run may have made its side effect.
    took_over: bool = False


@dataclass(frozen=True, slots=True)
class Replay:
    """A run before this one recorded its verdict: send that, run nothing."""

    verdict: Recorded


@dataclass(frozen=True, slots=True)
class Held:
    """Another run holds a live claim, ``left_s`` more seconds at most."""

    left_s: float


def token_key(token: str) -> str:
    """The item's key: SHA-256 of the token, in hex (the token is a credential)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _n(value: float) -> dict[str, str]:
    """Whole epoch seconds (the TTL attribute: DynamoDB's TTL reads whole seconds)."""
    return {"N": str(int(value))}


def _instant(value: float) -> dict[str, str]:
    """Epoch seconds to the millisecond, as ``_now`` reads the clock."""
    return {"N": f"{value:.3f}"}


class IdempotencyStore:
    """Claims, verdicts and releases in one DynamoDB table."""

    def __init__(
        self,
        dynamo: DynamoApi,
        table: str,
        *,
        ttl_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._dynamo = dynamo
        self.table = table
        self._ttl_s = ttl_s
        # Epoch seconds: the TTL attribute is one, and leases are compared across
        # replicas (whose clocks NTP keeps within far less than the lease margin).
        self._clock = clock

    async def claim(self, token: str, message_type: str, lease_s: float) -> Claim | Replay | Held:
        """Claim the task for one run of its handler, or say who has it."""
        key = token_key(token)
        for _ in range(_ATTEMPTS):
            now = self._now()
            claim = Claim(key, uuid.uuid4().hex, now + lease_s)
            item = {
                KEY_ATTRIBUTE: {"S": key},
                "state": {"S": _IN_PROGRESS},
                "claim": {"S": claim.claim_id},
                "lease_until": _instant(claim.lease_until),
                TTL_ATTRIBUTE: _n(now + self._ttl_s),
                "type": {"S": message_type},
            }
            try:
                answer = await self._call(
                    self._dynamo.put_item,
                    TableName=self.table,
                    Item=item,
                    ConditionExpression=_FREE_TO_CLAIM,
                    ExpressionAttributeNames=_NAMES,
                    ExpressionAttributeValues={
                        ":now": _instant(now),
                        ":in_progress": {"S": _IN_PROGRESS},
                    },
                    ReturnValues="ALL_OLD",
                )
            except _Refused:
                found = await self._read(key, now)
                if found is not None:
                    return found
                continue  # changed between the PutItem and the GetItem: claim again
            old = answer.get("Attributes") or {}
            if old.get("state", {}).get("S") == _IN_PROGRESS and not _expired(old, now):
                return replace(claim, took_over=True)
            return claim
        # The item changed under every attempt (claims released as fast as made): busy,
        # not broken; the copy comes back within a second.
        return Held(0.0)

    async def renew(self, claim: Claim, lease_s: float) -> Claim | None:
        """Extend the lease of a run still alive; None once the claim is not its own
        in progress any more (recorded, released, or taken over)."""
        now = self._now()
        renewed = replace(claim, lease_until=now + lease_s)
        try:
            await self._call(
                self._dynamo.update_item,
                TableName=self.table,
                Key={KEY_ATTRIBUTE: {"S": claim.key}},
                # The record outlives the run too, however long the run lives.
                UpdateExpression="SET #lease = :lease, #exp = :exp",
                ConditionExpression="#claim = :claim AND #state = :in_progress",
                ExpressionAttributeNames={
                    "#lease": "lease_until",
                    "#exp": TTL_ATTRIBUTE,
                    "#claim": "claim",
                    "#state": "state",
                },
                ExpressionAttributeValues={
                    ":lease": _instant(renewed.lease_until),
                    ":exp": _n(now + self._ttl_s),
                    ":claim": {"S": claim.claim_id},
                    ":in_progress": {"S": _IN_PROGRESS},
                },
            )
        except _Refused:
            return None
        return renewed

    async def record(self, claim: Claim, verdict: Recorded) -> bool:
        """Record the verdict of the run holding ``claim`` (or whose lease lapsed with
        nobody taking it); False if another run holds or recorded it (``find`` says)."""
        now = self._now()
        values: dict[str, Any] = {
            ":claim": {"S": claim.claim_id},
            ":done": {"S": _DONE},
            ":exp": _n(now + self._ttl_s),
            ":now": _instant(now),
            ":in_progress": {"S": _IN_PROGRESS},
        }
        # The claim is written back: a run whose claim was taken from it must find
        # this verdict, not overwrite it with its own.
        sets = ["#state = :done", "#exp = :exp", "#claim = :claim"]
        names = dict(_NAMES) | {"#claim": "claim"}
        for name, value in _verdict_attributes(verdict).items():
            names[f"#{name}"] = name
            values[f":{name}"] = {"S": value}
            sets.append(f"#{name} = :{name}")
        try:
            await self._call(
                self._dynamo.update_item,
                TableName=self.table,
                Key={KEY_ATTRIBUTE: {"S": claim.key}},
                UpdateExpression="SET " + ", ".join(sets) + " REMOVE #lease",
                ConditionExpression=_MAY_RECORD,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except _Refused:
            return False
        return True

    async def find(self, token: str) -> Replay | Held | None:
        """What holds the task now: a recorded verdict, a live claim, or nothing."""
        return await self._read(token_key(token), self._now())

    async def release(self, claim: Claim) -> None:
        """Give the claim up (the handler asked for a retry): the next copy may claim."""
        # Refused: taken over already (our lease ran out), nothing of ours to give up.
        with contextlib.suppress(_Refused):
            await self._call(
                self._dynamo.delete_item,
                TableName=self.table,
                Key={KEY_ATTRIBUTE: {"S": claim.key}},
                ConditionExpression="#claim = :claim AND #state = :in_progress",
                ExpressionAttributeNames={"#claim": "claim", "#state": "state"},
                ExpressionAttributeValues={
                    ":claim": {"S": claim.claim_id},
                    ":in_progress": {"S": _IN_PROGRESS},
                },
            )

    def _now(self) -> float:
        # To the millisecond, as sent: the conditions and the reads compare one number.
        return round(self._clock(), 3)

    async def _read(self, key: str, now: float) -> Replay | Held | None:
        """The item as a condition evaluated at ``now`` saw it (None: free to claim)."""
        answer = await self._call(
            self._dynamo.get_item,
            TableName=self.table,
            Key={KEY_ATTRIBUTE: {"S": key}},
            ConsistentRead=True,
        )
        item: Mapping[str, Any] | None = answer.get("Item")
        if item is None or _expired(item, now):
            return None
        state = item.get("state", {}).get("S")
        if state == _DONE:
            return Replay(_verdict_of(item))
        lease_until = _number(item, "lease_until")
        if state != _IN_PROGRESS:
            raise StoreUnavailable("UnreadableRecord")
        if lease_until < now:
            return None  # lapsed meanwhile: claim again
        return Held(lease_until - now)

    async def _call(self, call: Callable[..., Awaitable[Mapping[str, Any]]], **params: Any) -> Any:
        try:
            return await call(**params)
        except Exception as exc:  # every store failure is one of two answers
            if error_code(exc) == _CONDITION_FAILED:
                raise _Refused from exc
            raise StoreUnavailable(error_name(exc)) from exc


class _Refused(Exception):
    """A conditional write refused: the item is not in the state the write needs."""


def _expired(item: Mapping[str, Any], now: float) -> bool:
    return _number(item, TTL_ATTRIBUTE) < now


def _number(item: Mapping[str, Any], name: str) -> float:
    try:
        return float(item[name]["N"])
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreUnavailable("UnreadableRecord") from exc


def _verdict_attributes(verdict: Recorded) -> dict[str, str]:
    match verdict:
        case Succeeded(encoded=encoded):
            if encoded is None:
                raise ValueError("a Succeeded verdict is recorded encoded (core.once)")
            return {"verdict": "succeeded", "output": encoded}
        case Failed(error=error, cause=cause, outcome=outcome):
            attributes = {"verdict": "failed", "error": error, "outcome": outcome.value}
            # DynamoDB takes empty strings, but a missing attribute reads the same.
            return attributes | ({"cause": cause} if cause else {})
        case Closed():
            return {"verdict": "closed"}
        case Deferred(reason=reason):
            return {"verdict": "deferred"} | ({"reason": reason} if reason else {})
        case _:
            assert_never(verdict)


def _verdict_of(item: Mapping[str, Any]) -> Recorded:
    def text(name: str) -> str:
        value = item.get(name, {}).get("S", "")
        return value if isinstance(value, str) else ""

    try:
        match text("verdict"):
            case "succeeded":
                return Succeeded(text("output"), encoded=text("output"))
            case "failed":
                return Failed(text("error"), text("cause"), Outcome(text("outcome")))
            case "closed":
                return Closed()
            case "deferred":
                return Deferred(text("reason"))
    except ValueError as exc:  # an outcome this version does not know
        raise StoreUnavailable("UnreadableRecord") from exc
    raise StoreUnavailable("UnreadableRecord")
