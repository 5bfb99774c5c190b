"""Health, readiness, metrics and structured logs, on the fakes, over real HTTP."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import anyio
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker import ActivitySettings, BrokerSettings, QueueSettings, Router, Task, TaskFailed
from broker.observability.logs import redact_tokens
from broker.observability.metrics import METRIC_NAMES
from broker.observability.redact import token_ref
from broker.testing import FakeSfn, FakeSqs, TestBroker, client_error
from tests.observing import http_get, json_logs, samples, value

from .conftest import make_settings


def router() -> Router:
    r = Router()

    @r.handler("ok")
    async def ok(task: Task[Any]) -> str:
        return "fine"

    @r.handler("no")
    async def no(task: Task[Any]) -> None:
        raise TaskFailed("Order.Rejected", "no")

    return r


def http_settings(**overrides: Any) -> BrokerSettings:
    queue = QueueSettings(name="tasks", wait_time_s=1, dead_letter_queue="dlq")
    return make_settings(queue, http_port=0, http_host="127.0.0.1", **overrides)


async def test_metrics_count_what_happened_with_bounded_labels() -> None:
    async with TestBroker(router(), http_settings()) as tb:
        assert tb.broker.http_port
        for _ in range(3):
            await tb.start_task({}, message_type="ok")
        await tb.start_task({}, message_type="no")
        await tb.start_task({}, message_type="a-type-nobody-registered")
        tb.sqs.put("tasks", "{not json")
        await tb.wait_idle()
        status, body = await http_get(tb.broker.http_port, "/metrics")
    assert status == 200
    found = samples(body)
    families = {family.name for family in text_string_to_metric_families(body.decode())}
    # The parser drops "_total" from counter family names.
    assert {name.removesuffix("_total") for name in METRIC_NAMES} <= families
    total = "broker_messages_total"
    assert value(found, total, queue="tasks", type="ok", outcome="succeeded") == 3
    assert value(found, total, queue="tasks", type="no", outcome="failed") == 1
    # The raw type of a message is not a label value: it could be anything.
    assert value(found, total, queue="tasks", type="unknown", outcome="unknown_type") == 1
    assert value(found, total, queue="tasks", type="none", outcome="poison") == 1
    assert value(found, "broker_messages_received_total", queue="tasks") == 6
    assert value(found, "broker_handler_duration_seconds_count", type="ok") == 3
    assert value(found, "broker_aws_call_duration_seconds_count", api="SendTaskSuccess") == 3
    assert value(found, "broker_aws_call_duration_seconds_count", api="SendTaskFailure") == 2
    assert value(found, "broker_delete_batch_size_count") >= 1
    assert value(found, "broker_delete_batch_size_sum") == 6
    assert value(found, "broker_ready") == 1
    assert value(found, "broker_free_slots", queue="tasks") == 128
    assert "tok:" not in body.decode()


async def test_throttles_and_errors_are_counted_by_api_and_code() -> None:
    async with TestBroker(router(), http_settings()) as tb:
        tb.sfn.fail_next("send_task_success", client_error("ThrottlingException"), times=2)
        await tb.start_task({}, message_type="ok")
        await tb.wait_idle()
        assert tb.broker.http_port
        _, body = await http_get(tb.broker.http_port, "/metrics")
    found = samples(body)
    errors = "broker_aws_call_errors_total"
    assert value(found, errors, api="SendTaskSuccess", code="ThrottlingException") == 2
    assert value(found, "broker_throttles_total", api="SendTaskSuccess") == 2


async def test_readiness_goes_false_first_when_the_drain_starts() -> None:
    release = anyio.Event()
    r = Router()

    @r.handler("hold")
    async def hold(task: Task[Any]) -> str:
        await release.wait()
        return "done"

    async with TestBroker(r, http_settings()) as tb:
        port = tb.broker.http_port
        assert port
        assert (await http_get(port, "/readyz"))[0] == 200
        token = await tb.start_task({}, message_type="hold")
        with anyio.fail_after(5):
            while not tb.broker.in_flight:
                await anyio.sleep(0.01)
        tb.broker.request_stop()
        status, body = await http_get(port, "/readyz")
        assert (status, orjson.loads(body)["checks"]["state"]) == (503, "draining")
        # Still alive while it drains: the orchestrator must not kill it early.
        assert (await http_get(port, "/livez"))[0] == 200
        _, metrics = await http_get(port, "/metrics")
        assert value(samples(metrics), "broker_draining") == 1
        release.set()
    assert tb.sfn.outcomes[token].output == "done"


async def test_liveness_fails_when_a_poller_gets_no_answer() -> None:
    sqs = FakeSqs()
    async with TestBroker(router(), http_settings(), sqs=sqs) as tb:
        port = tb.broker.http_port
        assert port
        assert (await http_get(port, "/livez"))[0] == 200
        sqs.latency_s = 3600  # every call hangs: the next ReceiveMessage never returns
        [consumer] = tb.broker.consumers
        with anyio.fail_after(5):
            while not consumer._receiving_since:
                await anyio.sleep(0.01)
        # Pretend the hung receives started long ago, past the SDK's own timeouts.
        for loop in consumer._receiving_since:
            consumer._receiving_since[loop] -= 120
        status, body = await http_get(port, "/livez")
        assert status == 503
        assert "poller tasks" in orjson.loads(body)["checks"]
        sqs.latency_s = 0


async def test_readiness_reports_a_queue_whose_receives_keep_failing() -> None:
    async with TestBroker(router(), http_settings()) as tb:
        port = tb.broker.http_port
        assert port
        tb.sqs.fail_next("receive_message", client_error("AccessDenied"), times=3)
        with anyio.fail_after(15):
            while (await http_get(port, "/readyz"))[0] == 200:
                await anyio.sleep(0.05)
        _, body = await http_get(port, "/readyz")
        assert orjson.loads(body)["checks"]["queue tasks"] == "ReceiveMessage failing"
        with anyio.fail_after(20):
            while (await http_get(port, "/readyz"))[0] != 200:
                await anyio.sleep(0.1)


async def test_unknown_paths_and_methods() -> None:
    async with TestBroker(router(), http_settings()) as tb:
        port = tb.broker.http_port
        assert port
        assert (await http_get(port, "/nope"))[0] == 404
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(b"POST /livez HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await stream.receive()).startswith(b"HTTP/1.1 405")


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    with json_logs("INFO") as buffer:
        yield buffer


async def test_one_json_event_per_outcome_and_no_token_anywhere(logs: io.StringIO) -> None:
    r = router()

    @r.handler("leaky")
    async def leaky(task: Task[Any]) -> None:
        # A careless handler: the token ends up in its exception message.
        raise RuntimeError(f"could not complete {task.token}")

    async with TestBroker(r, http_settings(max_attempts=1)) as tb:
        tokens = [await tb.start_task({}, message_type=t) for t in ("ok", "no", "leaky")]
        await tb.wait_idle()
    lines = [orjson.loads(line) for line in logs.getvalue().splitlines()]
    events = {e["type"]: e for e in lines if e.get("event") == "outcome"}
    assert set(events) == {"ok", "no", "leaky"}
    assert events["ok"]["outcome"] == "succeeded"
    assert events["no"]["error"] == "Order.Rejected"
    assert events["leaky"]["outcome"] == "exhausted"
    assert events["leaky"]["error"] == "RuntimeError"
    for event in events.values():
        assert event["queue"] == "tasks"
        assert event["receive_count"] == 1
        assert event["message_id"].startswith("m-")
        assert event["duration_ms"] >= 0
    text = logs.getvalue()
    for token in tokens:
        assert token not in text


SHORT = "63c1ae47-2e88-44af-b60a-bca1996b087c"  # a moto token: no length rule catches it


@pytest.mark.parametrize(
    "line",
    [
        # botocore's DEBUG lines, as they print a ReceiveMessage answer and requests:
        # JSON in JSON in a bytes repr, a params dict, headers, query and XML protocols.
        f'Response body:\nb\'{{"Messages":[{{"Body":"{{\\\\"TaskToken\\\\": '
        f'\\\\"{SHORT}\\\\"}}","ReceiptHandle":"{SHORT}"}}]}}\'',
        f"Making request with params: {{'body': {{'taskToken': '{SHORT}', 'output': '1'}}}}",
        f"headers={{'X-Amz-Security-Token': b'{SHORT}', 'Content-Type': b'x'}}",
        f"Action=SendTaskSuccess&taskToken={SHORT}&output=1",
        f"MessageBody=%7B%22MyTaskToken%22%3A%22{SHORT}%22%7D",
        f"<ReceiptHandle>{SHORT}</ReceiptHandle><Body>{{&quot;myTaskToken&quot;:"
        f"&quot;{SHORT}&quot;}}</Body>",
        f'{{"taskToken": "{SHORT}", "input": "{{}}"}}',  # a GetActivityTask answer
        f'{{"Entries": [{{"Id": "0", "ReceiptHandle": "{SHORT}"}}]}}',
    ],
)
def test_token_named_fields_are_hidden_outside_any_message(line: str) -> None:
    redacted = redact_tokens(line)
    assert SHORT not in redacted
    assert token_ref(SHORT) in redacted  # still correlates with the broker's own lines


def test_a_queues_own_token_field_is_hidden_once_registered() -> None:
    from broker.observability.redact import register_token_fields

    line = f'{{"cb": "{SHORT}"}}'
    register_token_fields(["cb"])
    assert redact_tokens(line) == f'{{"cb": "{token_ref(SHORT)}"}}'


def test_the_access_key_id_of_a_signature_is_hidden() -> None:
    line = "Authorization: AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20261201/x"
    assert redact_tokens(line) == (
        "Authorization: AWS4-HMAC-SHA256 Credential=<access-key-id>/20261201/x"
    )


def test_references_and_ordinary_text_are_left_alone() -> None:
    for line in (
        "handler purchase raised ConnectionError (message m-000001, tok:4f650b64588e)",
        '"nextToken": null, "tokens": 3',
        "token=tok:4f650b64588e",
    ):
        assert redact_tokens(line) == line


def test_long_secrets_are_replaced_by_their_reference() -> None:
    token = "AQCEAAAAKgAAAAMAAAAA" + "x" * 400
    assert redact_tokens(f"token={token} end") == f"token={token_ref(token)} end"
    assert redact_tokens("queue https://sqs.us-east-1.amazonaws.com/1/q") == (
        "queue https://sqs.us-east-1.amazonaws.com/1/q"
    )


async def test_activity_handlers_show_in_the_in_flight_gauge() -> None:
    release = anyio.Event()
    r = Router()

    @r.handler("hold")
    async def hold(task: Task[Any]) -> str:
        await release.wait()
        return "done"

    settings = make_settings(
        queues=(),
        activities=(ActivitySettings(name="act", handler="hold", pollers=2),),
        http_port=0,
        http_host="127.0.0.1",
    )
    async with TestBroker(r, settings, sfn=FakeSfn(activity_poll_s=0.2)) as tb:
        port = tb.broker.http_port
        assert port
        token = tb.start_activity_task({})
        with anyio.fail_after(5):
            while not tb.broker.in_flight:
                await anyio.sleep(0.01)
        _, body = await http_get(port, "/metrics")
        release.set()
    found = samples(body)
    assert value(found, "broker_handlers_in_flight", queue="act") == 1
    assert value(found, "broker_messages_received_total", queue="act") == 1
    assert tb.sfn.outcomes[token].output == "done"


def test_outcome_durations_are_finer_than_the_loops_millisecond_clock() -> None:
    # uvloop's loop.time() ticks in whole milliseconds: sub-millisecond handlers would
    # all log 0.0 or 1.0 ms.  perf_counter gives the real duration.
    router = Router()

    @router.handler("quick")
    async def quick(task: Task[Any]) -> str:
        return "ok"

    async def run() -> list[float]:
        with json_logs("INFO") as buffer:
            async with TestBroker(router, make_settings()) as tb:
                for _ in range(20):
                    await tb.start_task({}, message_type="quick")
                await tb.wait_idle()
        events = [orjson.loads(line) for line in buffer.getvalue().splitlines()]
        return [e["duration_ms"] for e in events if e.get("event") == "outcome"]

    durations = anyio.run(run, backend_options={"use_uvloop": True})
    assert len(durations) == 20
    assert any(d != round(d) for d in durations), durations
