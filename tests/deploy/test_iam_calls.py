"""deploy/iam/broker-policy.json grants exactly the AWS calls the broker and its commands make.

Each command runs against moto through a recording endpoint (``aws_calls``), with the
policy's own names (queues ``orders``/``refunds`` and their DLQs, the activity
``review``, the topic ``approvals``, the table ``broker-idempotency``), driven so that
every feature that calls AWS is used: queues and DLQs by name and by URL, an activity by
name (created) and by ARN, the topic by ARN and by name, success, failure, heartbeats,
retries, dead-lettering, idempotent claims and replays, ``broker redrive`` and
``broker idempotency create-table``.  Each call must be allowed by a statement of the
role that runs it (the broker's, or an operator's for the two commands whose statements
are marked ``OptionalBroker...``), and each action a statement grants must be called
through it: a grant nothing uses is a permission too many.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import anyio
import pytest

from broker import BrokerSettings, build_router
from broker.decisions.links import new_key
from broker.local.env import AWS_OVERRIDES
from broker.local.moto import EmbeddedAws
from broker.service import Broker
from tests.cli import clean_env, run_cli
from tests.deploy.aws_calls import Call, recording
from tests.deploy.test_deploy import IAM_POLICY, as_list, setting_env_names

ROOT: Final = Path(__file__).resolve().parents[2]
#: Which statements each command's role holds: the operator's commands have their own.
OPERATOR_ROLES: Final = {
    "redrive": "OptionalBrokerRedrive",
    "create-table": "OptionalBrokerIdempotencyCreateTable",
}
TABLE: Final = "broker-idempotency"
_TIMEOUT_S: Final = 60


def statements() -> list[dict[str, Any]]:
    loaded: list[dict[str, Any]] = json.loads(IAM_POLICY.read_text())["Statement"]
    return loaded


def role_of(sid: str) -> str:
    return next(
        (role for role, prefix in OPERATOR_ROLES.items() if sid.startswith(prefix)), "broker"
    )


def grants(statement: Mapping[str, Any], call: Call) -> bool:
    resources = as_list(statement["Resource"])
    return call.action in as_list(statement["Action"]) and (
        resources == ["*"] or call.resource in resources
    )


def policy_problems(calls: Mapping[str, Iterable[Call]]) -> list[str]:
    """Calls no statement of their role allows, and grants no call of the role used."""
    problems = []
    policy = statements()
    for role, made in calls.items():
        held = [s for s in policy if role_of(s["Sid"]) == role]
        for call in sorted(set(made)):
            if not any(grants(s, call) for s in held):
                problems.append(f"{role}: {call} is not allowed")
    for statement in policy:
        made = set(calls.get(role_of(statement["Sid"]), ()))
        for action in as_list(statement["Action"]):
            if not any(c.action == action and grants(statement, c) for c in made):
                problems.append(f"{statement['Sid']}: {action} is granted but never called")
    return problems


def test_the_check_sees_a_missing_grant_and_an_unused_one() -> None:
    """The comparison itself, on calls made up for it (the real ones are below)."""
    used = [
        Call(action, resource)
        for statement in statements()
        if role_of(statement["Sid"]) == "broker"
        for action in as_list(statement["Action"])
        for resource in as_list(statement["Resource"])
    ]
    assert policy_problems({"broker": used}) == [
        f"{s['Sid']}: {a} is granted but never called"
        for s in statements()
        if role_of(s["Sid"]) != "broker"
        for a in as_list(s["Action"])
    ]
    extra = Call("sqs:PurgeQueue", "arn:aws:sqs:REGION:ACCOUNT:orders")
    assert f"broker: {extra} is not allowed" in policy_problems({"broker": [*used, extra]})


# -- driving every feature


def _token() -> str:
    return "AQB" + secrets.token_urlsafe(96)


def _env(endpoint: str, aws: EmbeddedAws, **settings: Any) -> dict[str, str]:
    env = clean_env(**{**aws.env(), "AWS_ENDPOINT_URL": endpoint})
    env.update(
        {
            f"BROKER_{k.upper()}": v if isinstance(v, str) else json.dumps(v)
            for k, v in settings.items()
        }
    )
    return env


def _cli(*args: str, env: dict[str, str]) -> str:
    done = run_cli(*args, env=env, cwd=ROOT)
    assert done.returncode == 0, f"broker {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _depth(aws: EmbeddedAws, url: str) -> int:
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attributes = aws.client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=names)
    return sum(int(attributes["Attributes"][name]) for name in names)


async def _settled(broker: Broker, aws: EmbeddedAws, urls: Iterable[str]) -> None:
    """Until every message of ``urls`` is deleted and no handler runs (state, deadline)."""
    with anyio.fail_after(_TIMEOUT_S):
        while broker.in_flight or any(_depth(aws, url) for url in urls):
            await anyio.sleep(0.1)


def _send(aws: EmbeddedAws, url: str, message_type: str, token: str | None = None) -> None:
    body = {"type": message_type, "taskToken": token or _token(), "input": {"subject": "s"}}
    aws.client("sqs").send_message(QueueUrl=url, MessageBody=json.dumps(body))


async def _run_the_broker(
    endpoint: str, aws: EmbeddedAws, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in setting_env_names() | set(AWS_OVERRIDES):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        if name.startswith(("BROKER_", "AWS_")):
            monkeypatch.setenv(name, value)
    settings = BrokerSettings(_env_file=None)  # type: ignore[call-arg]
    broker = Broker(settings, build_router(settings))
    sqs = aws.client("sqs")
    orders, refunds = (sqs.get_queue_url(QueueName=q)["QueueUrl"] for q in ("orders", "refunds"))
    async with anyio.create_task_group() as group:
        await group.start(broker.run)
        for message_type in ("callback", "no-such-type", "approval", "beat", "flaky"):
            _send(aws, orders, message_type)
        twice = _token()
        _send(aws, refunds, "once", twice)
        _send(aws, refunds, "once_flaky")
        await _settled(broker, aws, [orders, refunds])
        # Replayed from the table's record (GetItem): as another replica would see it,
        # so this process's memory of settled tasks (sqs.memory) is cleared first.
        for consumer in broker.consumers:
            consumer._processor.memory.clear()
        _send(aws, refunds, "once", twice)
        await _settled(broker, aws, [orders, refunds])
        broker.request_stop()


@pytest.mark.parametrize("client", ["lean", "botocore"])
async def test_the_policy_grants_what_the_commands_call_and_nothing_else(
    aws: EmbeddedAws, monkeypatch: pytest.MonkeyPatch, client: str
) -> None:
    sqs, sfn, sns = aws.client("sqs"), aws.client("stepfunctions"), aws.client("sns")
    for name in ("orders", "refunds", "orders-dlq", "refunds-dlq"):
        sqs.create_queue(QueueName=name)
    topic = sns.create_topic(Name="approvals")["TopicArn"]
    calls: dict[str, list[Call]] = {}
    with recording(aws.endpoint_url) as (endpoint, made):
        base = {
            "aws_client": client,
            "handlers": [
                "handlers.seeds:router",
                "handlers.approval:router",
                "tests.deploy.iam_handlers:router",
            ],
            "entry_points": "false",
            "decision_keys": [new_key()],
            "decision_base_url": "https://approvals.example.com",
            "idempotency_table": TABLE,
            "retry_base_delay_s": "0.1",
            "shutdown_grace_s": "1",
            "decision_port": "0",
        }
        _cli("idempotency", "create-table", TABLE, env=_env(endpoint, aws, aws_client=client))
        calls["create-table"], made[:] = list(made), []

        # A DLQ given by URL is looked up differently from one given by name.
        refunds_dlq = f"{endpoint}/{'123456789012'}/refunds-dlq"
        queues = [
            {"name": "orders", "dead_letter_queue": "orders-dlq"},
            {"name": "refunds", "dead_letter_queue": refunds_dlq},
        ]
        by_name = {"name": "review", "handler": "callback", "create_if_missing": True}
        env = _env(endpoint, aws, **base, queues=queues, activities=[by_name], decision_topic=topic)
        await _run_the_broker(endpoint, aws, env, monkeypatch)
        # An activity by ARN is described, one by name listed; a topic by name listed.
        review = sfn.list_activities()["activities"][0]["activityArn"]
        for activity, topic_as in ((review, topic), ("review", "approvals")):
            given = {"name": activity, "handler": "callback"}
            check = _env(
                endpoint, aws, **base, queues=queues, activities=[given], decision_topic=topic_as
            )
            _cli("check", env=check)
        calls["broker"], made[:] = list(made), []

        # One copy names its source queue (the unknown type's), one names none (kept).
        orders_dlq = sqs.get_queue_url(QueueName="orders-dlq")["QueueUrl"]
        sqs.send_message(QueueUrl=orders_dlq, MessageBody="{}")
        # With the broker's queues: a copy goes back only to a queue the settings name.
        redrive_env = _env(endpoint, aws, aws_client=client, queues=queues)
        moved = _cli("redrive", "orders-dlq", env=redrive_env)
        assert re.search(r"^moved [1-9]\d* in all$", moved, flags=re.MULTILINE), moved
        assert "name no source queue" in moved, moved
        calls["redrive"] = list(made)
    problems = policy_problems(calls)
    assert not problems, "deploy/iam/broker-policy.json:\n" + "\n".join(problems)
