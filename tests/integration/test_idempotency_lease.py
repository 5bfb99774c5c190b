"""``idempotent=True`` on moto's DynamoDB: a run outliving its lease, a ``NonRetryable``
failure delivered twice, a claim in the second after a lease ended (issue 21, 9-11).

The brokers are ``broker run`` processes on the embedded moto server with the plugin
``tests.integration.idem_plugin``; the lease edge talks to the table directly."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from pathlib import Path

import aioboto3

from broker.core.idempotency import Claim, Held, IdempotencyStore
from broker.local.executions import start_executions, wait_for_executions
from broker.local.flows import SeedFlows
from broker.local.moto import EmbeddedAws
from tests.cli import clean_env
from tests.integration.test_idempotency import (
    ROOT,
    Replica,
    create_table,
    effect_lines,
    forward_twice,
)

#: The run's timeout, the lease's margin (so a lease of 3 s) and the run's length.
TIMEOUT_S, MARGIN_S, RUN_S = 1, 2, 8


def broker_env(
    aws: EmbeddedAws, table: str, queue: str, handler: str, effects: Path
) -> dict[str, str]:
    return clean_env(
        **aws.env(),
        BROKER_QUEUES=json.dumps([{"name": queue, "default_handler": handler, "wait_time_s": 1}]),
        BROKER_HANDLERS='["tests.integration.idem_plugin:router"]',
        BROKER_ENTRY_POINTS="false",
        BROKER_IDEMPOTENCY_TABLE=table,
        # One slot each: a replica running the handler takes no second copy.
        BROKER_CONCURRENCY="1",
        BROKER_RETRY_BASE_DELAY_S="0.5",
        BROKER_RETRY_MAX_DELAY_S="2",
        BROKER_LOG_FORMAT="text",
        IDEM_TEST_EFFECTS=str(effects),
        IDEM_TEST_TIMEOUT_S=str(TIMEOUT_S),
        IDEM_TEST_LEASE_MARGIN_S=str(MARGIN_S),
        IDEM_TEST_RUN_S=str(RUN_S),
        PYTHONPATH=str(ROOT),
    )


def starts(effects: Path) -> Counter[str]:
    return Counter(line.split()[1] for line in effect_lines(effects) if line.startswith("start "))


def test_a_run_outliving_its_lease_runs_once_on_two_replicas_and_the_task_completes(
    aws: EmbeddedAws, seed_flows: SeedFlows, tmp_path: Path
) -> None:
    # Issue 21 item 9: each replica got a copy; the lease (timeout + margin) lapsed while
    # the first run went on, the other replica took the task over, each verdict was
    # refused "taken over", and the runs alternated with the task left open.
    table = create_table(aws, tmp_path)
    sqs = aws.client("sqs")
    work = sqs.create_queue(QueueName=f"idem-lease-{uuid.uuid4().hex[:6]}")["QueueUrl"]
    effects = tmp_path / "effects.log"
    env = broker_env(aws, table, work, "slow-charge", effects)
    replicas = [Replica("a", env, tmp_path), Replica("b", env, tmp_path)]
    try:
        for replica in replicas:
            replica.wait_running()
        (arn,) = start_executions(
            aws, seed_flows.state_machines["callback"], [{"case": 7}], name_prefix="lease"
        )
        started = time.monotonic()
        forward_twice(aws, seed_flows.queues["callback"], work, 1)
        result = wait_for_executions(aws, [arn], timeout_s=RUN_S + 40)[arn]
        took_s = time.monotonic() - started
        logs = [replica.log() for replica in replicas]
    finally:
        for replica in replicas:
            replica.stop()
    runs = sum(starts(effects).values())
    print(f"\nrun outliving its lease: {runs} run(s), {result.status} after {took_s:.1f}s")
    assert runs == 1, (runs, result.status)
    # Its late result, or (where the source stops waiting for a handler deaf to its
    # timeout) the timeout failure; either way the task is closed, once.
    assert result.status == "SUCCEEDED" or result.error == "Broker.HandlerTimeout", result
    if result.status == "SUCCEEDED":
        assert result.output == {"charged": 7}
    assert took_s < RUN_S + 20
    # Each replica held a copy: the one not running it waited for the claim.
    assert sum("is running elsewhere" in log for log in logs) == 1, logs
    assert not any("taken over" in log or "took over" in log for log in logs), logs


def test_a_non_retryable_failure_is_recorded_and_a_second_delivery_does_not_run(
    aws: EmbeddedAws, seed_flows: SeedFlows, tmp_path: Path
) -> None:
    # Issue 21 item 10: the failure was not recorded, so a duplicate ran the handler again.
    table = create_table(aws, tmp_path)
    sqs = aws.client("sqs")
    work = sqs.create_queue(QueueName=f"idem-nonretry-{uuid.uuid4().hex[:6]}")["QueueUrl"]
    effects = tmp_path / "effects.log"
    replica = Replica("a", broker_env(aws, table, work, "declined", effects), tmp_path)
    try:
        replica.wait_running()
        (arn,) = start_executions(
            aws, seed_flows.state_machines["callback"], [{"case": 1}], name_prefix="declined"
        )
        inbox = seed_flows.queues["callback"]
        body = None
        deadline = time.monotonic() + 30
        while body is None:
            assert time.monotonic() < deadline
            batch = sqs.receive_message(QueueUrl=inbox, MaxNumberOfMessages=1, WaitTimeSeconds=1)
            for message in batch.get("Messages", ()):
                body = message["Body"]
                sqs.delete_message(QueueUrl=inbox, ReceiptHandle=message["ReceiptHandle"])
        sqs.send_message(QueueUrl=work, MessageBody=body)
        result = wait_for_executions(aws, [arn], timeout_s=30)[arn]
        assert result.status == "FAILED", result
    finally:
        replica.stop()
    # The second delivery, later, on another replica: the one that settled the task
    # drops a copy from its own memory (sqs.memory) without asking the table.
    second = Replica("b", broker_env(aws, table, work, "declined", effects), tmp_path)
    try:
        second.wait_running()
        sqs.send_message(QueueUrl=work, MessageBody=body)
        deadline = time.monotonic() + 30
        while "broker.outcome: declined " not in second.log():  # the copy's outcome
            assert time.monotonic() < deadline, second.log()[-3000:]
            time.sleep(0.2)
        log = second.log()
    finally:
        second.stop()
    assert result.error == "CardDeclined"
    assert list(starts(effects).values()) == [1], log[-3000:]
    assert "replaying its recorded verdict" in log


async def test_a_claim_in_the_second_after_the_lease_ended_takes_the_task(
    aws: EmbeddedAws, tmp_path: Path
) -> None:
    # Issue 21 item 11: the condition compared whole seconds and the read fractional
    # ones, so DynamoDB refused the claim, the read found it free, three times over:
    # StoreUnavailable("ClaimContended"), the copy hidden for the full backoff.
    table = create_table(aws, tmp_path)
    now = [1_800_000_000.4]
    env = aws.env()
    session = aioboto3.Session(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=aws.region,
    )
    async with session.client("dynamodb", endpoint_url=aws.endpoint_url) as dynamo:
        store = IdempotencyStore(dynamo, table, ttl_s=3_600, clock=lambda: now[0])
        for after_s in (0.001, 0.3, 0.7, 0.999):
            token = f"tok-{uuid.uuid4().hex}"
            now[0] = 1_800_000_000.4
            crashed = await store.claim(token, "charge", lease_s=33)
            assert isinstance(crashed, Claim)
            now[0] = crashed.lease_until - 0.001
            assert isinstance(await store.claim(token, "charge", lease_s=33), Held)
            now[0] = crashed.lease_until + after_s
            taken = await store.claim(token, "charge", lease_s=33)
            assert isinstance(taken, Claim), after_s
            assert taken.took_over
            # A renewal holds it past its first end, on DynamoDB's own conditions.
            now[0] = taken.lease_until - 1
            assert await store.renew(taken, lease_s=33) is not None
            now[0] = taken.lease_until + 1
            assert isinstance(await store.claim(token, "charge", lease_s=33), Held)
            assert await store.renew(crashed, lease_s=33) is None
