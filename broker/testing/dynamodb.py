"""An in-memory DynamoDB with the calls of the idempotency table (``FakeDynamoDb``).

Items are kept in DynamoDB's typed form (``{"S": …}``, ``{"N": "…"}``).  Conditional
writes keep AWS's semantics: a ``ConditionExpression`` that does not hold raises
``ConditionalCheckFailedException`` and changes nothing.  The expressions understood
are the subset the broker writes: comparisons (``=``, ``<>``, ``<``, ``<=``, ``>``,
``>=``) of ``#name`` / ``:value`` operands, ``attribute_exists`` /
``attribute_not_exists``, ``AND``, ``OR``, ``NOT`` and parentheses; updates of the form
``SET #a = :v, … REMOVE #b, …``.  Anything else raises ``ValidationException``, so a
new expression in the broker cannot pass against the fake by accident; so does an
``ExpressionAttributeNames`` / ``ExpressionAttributeValues`` entry no expression uses,
as on DynamoDB.  ``PutItem`` returns the item it replaced with ``ReturnValues="ALL_OLD"``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from broker.testing._faults import Faults, client_error

__all__ = ["FakeDynamoDb"]

_TOKENS = re.compile(r"\s*(<>|<=|>=|[=<>(),]|[#:]?[A-Za-z_][A-Za-z0-9_]*)")
_Item = dict[str, dict[str, Any]]


@dataclass
class _Table:
    name: str
    arn: str
    key: str
    key_type: str = "S"
    ttl_attribute: str | None = None
    items: dict[str, _Item] = field(default_factory=dict)


class FakeDynamoDb(Faults):
    """Tables with a string partition key; PutItem, GetItem, UpdateItem, DeleteItem with
    conditions; DescribeTable, DescribeTimeToLive, CreateTable, UpdateTimeToLive.
    ``fail_next("put_item", …)`` injects faults, as on the other fakes."""

    def __init__(self, *, region: str = "us-east-1", account: str = "000000000000") -> None:
        super().__init__()
        self._arn_prefix = f"arn:aws:dynamodb:{region}:{account}:table/"
        self.tables: dict[str, _Table] = {}

    # -- set-up helpers (synchronous, not part of the DynamoDB API)
    def add_table(
        self, name: str, *, key: str = "id", key_type: str = "S", ttl: str | None = "expires_at"
    ) -> str:
        """Create an active table (TTL on ``ttl``); returns its ARN."""
        arn = self._arn_prefix + name
        self.tables.setdefault(name, _Table(name, arn, key, key_type, ttl))
        return arn

    def items(self, table: str) -> list[_Item]:
        return [copy.deepcopy(item) for item in self._table(table).items.values()]

    # -- the API
    async def put_item(self, **params: Any) -> Mapping[str, Any]:
        async with self._call("put_item"):
            table = self._table(params["TableName"])
            item: _Item = copy.deepcopy(params["Item"])
            key = self._key_of(table, item)
            old = table.items.get(key)
            self._check(old, params)
            table.items[key] = item
            return_values = params.get("ReturnValues", "NONE")
            if return_values not in ("NONE", "ALL_OLD"):
                raise client_error("ValidationException", f"ReturnValues {return_values}")
            return {"Attributes": old} if old is not None and return_values == "ALL_OLD" else {}

    async def get_item(self, **params: Any) -> Mapping[str, Any]:
        async with self._call("get_item"):
            table = self._table(params["TableName"])
            item = table.items.get(self._key_of(table, params["Key"]))
            return {} if item is None else {"Item": copy.deepcopy(item)}

    async def update_item(self, **params: Any) -> Mapping[str, Any]:
        async with self._call("update_item"):
            table = self._table(params["TableName"])
            key = self._key_of(table, params["Key"])
            current = table.items.get(key)
            self._check(current, params)
            item = copy.deepcopy(current) if current else copy.deepcopy(dict(params["Key"]))
            _update(item, params["UpdateExpression"], params)
            table.items[key] = item
            return {}

    async def delete_item(self, **params: Any) -> Mapping[str, Any]:
        async with self._call("delete_item"):
            table = self._table(params["TableName"])
            key = self._key_of(table, params["Key"])
            self._check(table.items.get(key), params)
            table.items.pop(key, None)
            return {}

    async def describe_table(self, **params: Any) -> Mapping[str, Any]:
        async with self._call("describe_table"):
            table = self._table(params["TableName"])
            return {
                "Table": {
                    "TableName": table.name,
                    "TableArn": table.arn,
                    "TableStatus": "ACTIVE",
                    "KeySchema": [{"AttributeName": table.key, "KeyType": "HASH"}],
                    "AttributeDefinitions": [
                        {"AttributeName": table.key, "AttributeType": table.key_type}
                    ],
                }
            }

    async def describe_time_to_live(self, **params: Any) -> Mapping[str, Any]:
        async with self._call("describe_time_to_live"):
            table = self._table(params["TableName"])
            if table.ttl_attribute is None:
                return {"TimeToLiveDescription": {"TimeToLiveStatus": "DISABLED"}}
            return {
                "TimeToLiveDescription": {
                    "TimeToLiveStatus": "ENABLED",
                    "AttributeName": table.ttl_attribute,
                }
            }

    async def create_table(self, **params: Any) -> Mapping[str, Any]:
        async with self._call("create_table"):
            name = params["TableName"]
            if name in self.tables:
                raise client_error("ResourceInUseException", f"Table already exists: {name}")
            (key,) = params["KeySchema"]
            types = {a["AttributeName"]: a["AttributeType"] for a in params["AttributeDefinitions"]}
            self.add_table(name, key=key["AttributeName"], key_type=types[key["AttributeName"]])
            self.tables[name].ttl_attribute = None
            return {"TableDescription": {"TableName": name, "TableStatus": "CREATING"}}

    async def update_time_to_live(self, **params: Any) -> Mapping[str, Any]:
        async with self._call("update_time_to_live"):
            table = self._table(params["TableName"])
            spec = params["TimeToLiveSpecification"]
            table.ttl_attribute = spec["AttributeName"] if spec["Enabled"] else None
            return {"TimeToLiveSpecification": spec}

    # -- internals
    def _table(self, name_or_arn: str) -> _Table:
        name = name_or_arn.rsplit("table/", 1)[-1]
        table = self.tables.get(name)
        if table is None:
            raise client_error(
                "ResourceNotFoundException", "Requested resource not found", op="DescribeTable"
            )
        return table

    @staticmethod
    def _key_of(table: _Table, item: Mapping[str, Any]) -> str:
        value = item.get(table.key, {}).get(table.key_type)
        if not isinstance(value, str) or not value:
            raise client_error("ValidationException", "the key attribute is missing")
        return value

    @staticmethod
    def _check(item: _Item | None, params: Mapping[str, Any]) -> None:
        _all_used(params)
        expression = params.get("ConditionExpression")
        if expression is None:
            return
        holds = _Condition(
            expression,
            params.get("ExpressionAttributeNames", {}),
            params.get("ExpressionAttributeValues", {}),
        ).holds(item or {})
        if not holds:
            raise client_error("ConditionalCheckFailedException", "The conditional request failed")


def _all_used(params: Mapping[str, Any]) -> None:
    """DynamoDB refuses a name or value placeholder that no expression uses."""
    used = {
        token
        for expression in (params.get("ConditionExpression"), params.get("UpdateExpression"))
        if expression
        for token in re.findall(r"[#:][A-Za-z0-9_]+", expression)
    }
    for given in ("ExpressionAttributeNames", "ExpressionAttributeValues"):
        unused = sorted(set(params.get(given, {})) - used)
        if unused:
            raise client_error(
                "ValidationException",
                f"Value provided in {given} unused in expressions: keys: {{{', '.join(unused)}}}",
            )


def _invalid(why: str) -> Exception:
    return client_error("ValidationException", f"Invalid expression: {why}")


def _tokens(expression: str) -> list[str]:
    tokens, at = [], 0
    while at < len(expression.rstrip()):
        match = _TOKENS.match(expression, at)
        if match is None:
            raise _invalid(f"cannot read {expression[at:]!r}")
        tokens.append(match.group(1))
        at = match.end()
    return tokens


def _compare(op: str, left: Any, right: Any) -> bool:
    if left is None or right is None or set(left) != set(right):
        return op == "<>" and left != right  # missing or of another type
    (kind,) = left
    a, b = left[kind], right[kind]
    if kind == "N":
        a, b = float(a), float(b)
    results: dict[str, bool] = {
        "=": a == b,
        "<>": a != b,
        "<": a < b,
        "<=": a <= b,
        ">": a > b,
        ">=": a >= b,
    }
    return results[op]


class _Condition:
    """A recursive-descent reading of one condition over one item."""

    def __init__(
        self, expression: str, names: Mapping[str, str], values: Mapping[str, Any]
    ) -> None:
        self._tokens = _tokens(expression)
        self._names = names
        self._values = values
        self._at = 0
        self._item: Mapping[str, Any] = {}

    def holds(self, item: Mapping[str, Any]) -> bool:
        self._item = item
        self._at = 0
        result = self._or()
        if self._at != len(self._tokens):
            raise _invalid(f"unexpected {self._tokens[self._at]!r}")
        return result

    def _peek(self) -> str | None:
        return self._tokens[self._at] if self._at < len(self._tokens) else None

    def _take(self, expected: str | None = None) -> str:
        token = self._peek()
        if token is None or (expected is not None and token.upper() != expected):
            raise _invalid(f"expected {expected or 'more'}, found {token!r}")
        self._at += 1
        return token

    def _or(self) -> bool:
        result = self._and()
        while (self._peek() or "").upper() == "OR":
            self._take()
            right = self._and()
            result = result or right
        return result

    def _and(self) -> bool:
        result = self._not()
        while (self._peek() or "").upper() == "AND":
            self._take()
            right = self._not()
            result = result and right
        return result

    def _not(self) -> bool:
        if (self._peek() or "").upper() == "NOT":
            self._take()
            return not self._not()
        return self._primary()

    def _primary(self) -> bool:
        word = self._take()
        if word == "(":
            result = self._or()
            self._take(")")
            return result
        if word in ("attribute_exists", "attribute_not_exists"):
            self._take("(")
            name = self._name(self._take())
            self._take(")")
            return (name in self._item) == (word == "attribute_exists")
        left = self._operand(word)
        op = self._take()
        if op not in ("=", "<>", "<", "<=", ">", ">="):
            raise _invalid(f"unknown comparison {op!r}")
        return _compare(op, left, self._operand(self._take()))

    def _name(self, token: str) -> str:
        if token.startswith("#"):
            if token not in self._names:
                raise _invalid(f"{token} is not in ExpressionAttributeNames")
            return self._names[token]
        if token.startswith(":") or not token.isidentifier():
            raise _invalid(f"{token!r} is not an attribute name")
        return token

    def _operand(self, token: str) -> Any:
        if token.startswith(":"):
            if token not in self._values:
                raise _invalid(f"{token} is not in ExpressionAttributeValues")
            return self._values[token]
        return self._item.get(self._name(token))


def _update(item: _Item, expression: str, params: Mapping[str, Any]) -> None:
    names = params.get("ExpressionAttributeNames", {})
    values = params.get("ExpressionAttributeValues", {})
    reader = _Condition("", names, values)
    sections = re.split(r"\b(SET|REMOVE)\b", expression.strip())
    if sections[0].strip():
        raise _invalid(f"unexpected {sections[0]!r}")
    for action, body in zip(sections[1::2], sections[2::2], strict=True):
        for clause in body.split(","):
            if action == "SET":
                target, sep, value = clause.partition("=")
                if not sep or value.strip() not in values:
                    raise _invalid(f"SET {clause!r}")
                item[reader._name(target.strip())] = copy.deepcopy(values[value.strip()])
            else:
                item.pop(reader._name(clause.strip()), None)
