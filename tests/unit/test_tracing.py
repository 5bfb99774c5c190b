"""OpenTelemetry spans per message, continuing a producer's trace; nothing when off."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from broker import ActivitySettings, Router, Task, TaskFailed
from broker.observability.tracing import Tracer
from broker.testing import FakeSfn, TestBroker

from .conftest import make_settings

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def router() -> Router:
    r = Router()

    @r.handler("ok")
    async def ok(task: Task[Any]) -> str:
        return "fine"

    @r.handler("no")
    async def no(task: Task[Any]) -> None:
        raise TaskFailed("Order.Rejected", "no")

    return r


async def test_each_message_gets_a_span_with_handler_and_completion_children() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with TestBroker(router(), tracer_provider=provider) as tb:
        await tb.start_task(
            {}, message_type="ok", attributes={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
        )
        await tb.start_task({}, message_type="no")
        await tb.wait_idle()
    spans = exporter.get_finished_spans()
    messages = [s for s in spans if s.name == "tasks process"]
    assert len(messages) == 2
    by_type = {s.attributes["broker.type"]: s for s in messages if s.attributes}
    ok, no = by_type["ok"], by_type["no"]
    assert ok.kind is SpanKind.CONSUMER
    # The producer's trace goes on through the broker.
    assert format(ok.context.trace_id, "032x") == TRACE_ID
    assert ok.parent is not None
    assert format(ok.parent.span_id, "016x") == PARENT_ID
    assert ok.attributes is not None
    assert ok.attributes["broker.outcome"] == "succeeded"
    assert no.attributes is not None
    assert (no.attributes["broker.outcome"], no.attributes["broker.error"]) == (
        "failed",
        "Order.Rejected",
    )
    children = {s.name for s in spans if s.parent and s.parent.span_id == ok.context.span_id}
    assert {"handler ok", "SendTaskSuccess"} <= children
    # Polls are not part of any message: no span for them.
    assert not [s for s in spans if s.name == "ReceiveMessage"]


def test_tracing_is_off_unless_asked_for() -> None:
    assert not Tracer.from_environment({}).enabled
    assert not Tracer.from_environment({"OTEL_TRACES_EXPORTER": "none"}).enabled
    disabled = {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"}
    assert not Tracer.from_environment(disabled).enabled
    assert not Tracer(None).enabled


def test_the_standard_variables_switch_it_on() -> None:
    # In a child process: switching tracing on installs a global tracer provider.
    code = (
        "from broker.observability.tracing import Tracer; print(Tracer.from_environment().enabled)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "false"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "True"


async def test_no_span_records_a_whole_token() -> None:
    # AWS quotes a refused token in its error message, and a handler's exception can
    # quote its own: the spans' exception events, status and attributes must not.
    from broker.testing import client_error

    r = Router()

    @r.handler("ok")
    async def ok_handler(task: Task[Any]) -> str:
        return "fine"

    @r.handler("quotes")
    async def quotes(task: Task[Any]) -> None:
        raise TaskFailed("Order.Rejected", f"refused task {task.token}")

    @r.handler("leaky")
    async def leaky(task: Task[Any]) -> None:
        raise RuntimeError(f"could not handle {task.token}")

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with TestBroker(r, tracer_provider=provider) as tb:
        ok = await tb.start_task({}, message_type="ok")
        # Scripted before the broker can run: the completion of `ok` is refused.
        tb.sfn.fail_next(
            "send_task_success",
            client_error(
                "ValidationException",
                f"1 validation error detected: Value '{ok}' at 'taskToken' failed to "
                "satisfy constraint",
            ),
        )
        quoted = await tb.start_task({}, message_type="quotes")
        leaked = await tb.start_task({}, message_type="leaky")
        await tb.wait_idle()
    spans = exporter.get_finished_spans()
    dumped = "\n".join(span.to_json() for span in spans)
    events = [event for span in spans for event in span.events]
    assert any(event.name == "exception" for event in events)
    assert "ValidationException" in dumped  # the error is recorded, only the token is not
    assert "RuntimeError" in dumped
    for token in (ok, quoted, leaked):
        assert token not in dumped


async def test_an_activity_task_gets_the_same_spans_as_a_message() -> None:
    # One step for every source: an activity task opens a task span with its handler
    # and completion as children, annotated like a message's.
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = make_settings(
        queues=(), activities=(ActivitySettings(name="work", type_field="kind"),)
    )
    sfn = FakeSfn(activity_poll_s=0.05)
    async with TestBroker(router(), settings, sfn=sfn, tracer_provider=provider) as tb:
        tb.start_activity_task({"kind": "ok"})
        tb.start_activity_task({"kind": "no"})
        await tb.wait_idle()
    spans = exporter.get_finished_spans()
    tasks = [s for s in spans if s.name == "work process"]
    assert len(tasks) == 2
    by_type = {s.attributes["broker.type"]: s for s in tasks if s.attributes}
    ok, no = by_type["ok"], by_type["no"]
    assert ok.attributes is not None
    assert ok.attributes["messaging.system"] == "aws_stepfunctions"
    assert ok.attributes["broker.outcome"] == "succeeded"
    assert no.attributes is not None
    assert (no.attributes["broker.outcome"], no.attributes["broker.error"]) == (
        "failed",
        "Order.Rejected",
    )
    children = {s.name for s in spans if s.parent and s.parent.span_id == ok.context.span_id}
    assert {"handler ok", "SendTaskSuccess"} <= children
