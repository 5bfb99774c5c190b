"""The stub's Step Functions quotas: token buckets per API (or shared), the throttle answer
AWS gives, and the per-API, per-second counts the fleet test reads (issue 14)."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from awsstub import StubControl, StubProcess
from awsstub._quota import Quotas
from broker.aws.errors import ErrorKind, classify, is_throttle

from .conftest import AsyncControl

SHARED = ["SendTaskSuccess", "SendTaskFailure"]


def test_a_bucket_gives_its_burst_then_its_refill() -> None:
    quotas = Quotas.from_json({"buckets": [{"apis": SHARED, "burst": 3, "rate_per_s": 2}]})
    t = 10.0
    assert [quotas.admit("SendTaskSuccess", t, visible=5) for _ in range(3)] == [True] * 3
    assert not quotas.admit("SendTaskFailure", t, visible=5), "one bucket for both"
    assert quotas.admit("SendTaskHeartbeat", t, visible=5), "not in a bucket: never throttled"
    assert not quotas.admit("SendTaskSuccess", t + 0.4, visible=4)  # 0.8 of a token
    assert quotas.admit("SendTaskSuccess", t + 0.5, visible=4)  # one token after 0.5 s
    assert quotas.admit("SendTaskSuccess", t + 2.5, visible=0)  # 4 tokens: capped at 3
    assert quotas.admit("SendTaskSuccess", t + 2.6, visible=0)  # 2.2 left before it
    assert quotas.admit("SendTaskSuccess", t + 2.6, visible=0)
    assert not quotas.admit("SendTaskSuccess", t + 2.6, visible=0)

    stats = quotas.stats()
    assert stats["calls"] == {"SendTaskSuccess": 9, "SendTaskFailure": 1}
    assert stats["throttled"] == {"SendTaskSuccess": 2, "SendTaskFailure": 1}
    timeline = stats["timeline"]
    assert [row["second"] for row in timeline] == [0, 1, 2]
    assert timeline[0]["calls"] == {
        "SendTaskSuccess": 5,
        "SendTaskFailure": 1,
        "SendTaskHeartbeat": 1,
    }
    assert timeline[0]["throttled"] == {"SendTaskFailure": 1, "SendTaskSuccess": 1}
    assert (timeline[0]["visible_min"], timeline[0]["visible_max"]) == (4, 5)
    assert timeline[1]["visible_min"] is None, "no call in that second"
    assert timeline[2]["visible_min"] == 0


def test_per_api_buckets_are_independent_as_in_aws() -> None:
    quotas = Quotas.parse_flag(["SendTaskSuccess=1/1", "SendTaskFailure=1/1"])
    assert quotas.admit("SendTaskSuccess", 0.0, visible=0)
    assert quotas.admit("SendTaskFailure", 0.0, visible=0)
    assert not quotas.admit("SendTaskSuccess", 0.0, visible=0)
    assert len(quotas.stats()["buckets"]) == 2


@pytest.mark.parametrize(
    "flag",
    ["SendTaskSuccess", "SendTaskSuccess=0/5", "SendTaskSuccess=5/0", "=5/5", "A=1/1,B"],
)
def test_a_bad_quota_flag_is_refused(flag: str) -> None:
    with pytest.raises(ValueError, match="is not APIS=BURST/RATE"):
        Quotas.parse_flag([flag])


def test_an_api_in_two_buckets_is_refused() -> None:
    with pytest.raises(ValueError, match="two buckets"):
        Quotas.parse_flag(["SendTaskSuccess=1/1", "SendTaskSuccess,SendTaskFailure=1/1"])


async def test_an_empty_bucket_answers_throttling_as_aws_does(
    sfn: Any, control: AsyncControl
) -> None:
    await control.add_tasks("q", count=4)
    tokens = list((await control.tasks()).keys())
    await control.set_quotas([{"apis": SHARED, "burst": 2, "rate_per_s": 0.01}])
    await sfn.send_task_success(taskToken=tokens[0], output="{}")
    await sfn.send_task_failure(taskToken=tokens[1], error="E", cause="c")
    with pytest.raises(ClientError) as caught:
        await sfn.send_task_success(taskToken=tokens[2], output="{}")
    assert caught.value.response["Error"]["Code"] == "ThrottlingException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert classify(caught.value) is ErrorKind.TRANSIENT
    assert is_throttle("ThrottlingException")
    await sfn.send_task_heartbeat(taskToken=tokens[3])  # not in the bucket

    stats = await control.stats()
    quotas = stats["quotas"]
    assert quotas["calls"] == {"SendTaskSuccess": 2, "SendTaskFailure": 1}
    assert quotas["throttled"] == {"SendTaskSuccess": 1}
    assert stats["tasks"]["open"] == 2, "a throttled call changes nothing"
    rows = quotas["timeline"]  # one row, unless the calls straddled a second
    assert {row["visible_min"] for row in rows} | {row["visible_max"] for row in rows} == {4}
    assert sum(sum(row["calls"].values()) for row in rows) == 4

    await control.set_quotas([])
    await sfn.send_task_success(taskToken=tokens[2], output="{}")
    await control.reset()
    assert (await control.stats())["quotas"]["buckets"] == []


def test_the_quota_flag_of_the_stub_process() -> None:
    with StubProcess(quotas=("SendTaskSuccess=1/0.01",)) as stub:
        control = StubControl(stub.endpoint_url)
        assert control.stats()["quotas"]["buckets"] == [
            {"apis": ["SendTaskSuccess"], "burst": 1.0, "rate_per_s": 0.01}
        ]
