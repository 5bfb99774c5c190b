"""Invariant 6: no token leaves the process, in any spelling a handler is likely to produce.

One table: each spelling a careless handler writes its token in (raw, the URL and form
encodings, JSON with and without escaped slashes, twice percent-encoded, base64 and
base64url, cut in two halves, a bytes repr, an exception's traceback) by each way out of the
process (its own log line, a log line from another thread, the SendTaskFailure cause, the
dead-letter copy's attributes, its span, an asyncio task exception nobody retrieved, and stdout and
stderr of a real ``broker run``).  Nowhere may ``RUN`` characters in a row of any spelling
of the token be found.  The fakes show the first five; the last needs the process, on
the embedded moto server.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import json
import logging
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, quote_plus

import anyio
import orjson
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from broker import QueueSettings, Router, Task, TaskFailed
from broker.local.moto import EmbeddedAws
from broker.observability.held import MIN_RUN
from broker.observability.redact import redact, redact_token, token_ref
from broker.testing import TestBroker, client_error
from tests.cli import clean_env
from tests.observing import json_logs
from tests.unit.conftest import make_settings

#: The invariant's length: no run this long of any spelling survives (MIN_RUN + 1, as
#: the index's guarantee is MIN_RUN).
RUN = MIN_RUN + 1


def make_token(seed: str) -> str:
    """A token shaped like Step Functions' (base64, 644 characters, ``+``, ``/``, ``=``)."""
    raw = b"".join(hashlib.sha256(f"{seed}:{i}".encode()).digest() for i in range(16))[:482]
    token = base64.b64encode(raw).decode()
    assert "+" in token
    assert "/" in token
    assert token.endswith("=")
    return token


def _traceback(token: str) -> str:
    try:
        raise RuntimeError(f"callback refused for {token}")
    except RuntimeError as exc:
        return "".join(traceback.format_exception(exc))


SPELLINGS: dict[str, Callable[[str], str]] = {
    "raw": lambda t: f"callback {t} failed",
    "quote": lambda t: f"GET https://cb.example.com/done?t={quote(t)}&x=1",
    "quote(safe='')": lambda t: f"t={quote(t, safe='')}",
    "quote_plus": lambda t: f"form t={quote_plus(t)}&a=b",
    "json.dumps": lambda t: json.dumps({"task": t}),
    "json with \\/": lambda t: json.dumps({"task": t}).replace("/", "\\/"),
    "double-encoded": lambda t: f"next=/cb%3Ft%3D{quote(quote(t, safe=''), safe='')}",
    "base64": lambda t: f"state {base64.b64encode(json.dumps({'t': t}).encode()).decode()}",
    "base64url": lambda t: f"state={base64.urlsafe_b64encode(t.encode()).decode()}",
    "halves": lambda t: f"first half {t[: len(t) // 2]}, and later: second half {t[len(t) // 2 :]}",
    "repr": lambda t: repr({"t": t.encode()}).replace("'t'", "'x'"),
    "traceback": _traceback,
}


def spelled(token: str) -> list[str]:
    """Every spelling's encoded form of the token (the pieces of the halves are the raw
    token's own)."""
    forms = [
        token,
        quote(token),
        quote(token, safe=""),
        quote_plus(token),
        json.dumps(token).replace("/", "\\/"),
        quote(quote(token, safe=""), safe=""),
        base64.urlsafe_b64encode(token.encode()).decode(),
        repr(token.encode()),
    ]
    # base64 of the JSON around it: every alignment of the token inside it.
    inner = json.dumps({"t": token}).encode()
    forms.append(base64.b64encode(inner).decode())
    return forms


def leaks(text: str, token: str) -> list[str]:
    """The ``RUN``-character pieces of any spelling of ``token`` found in ``text``."""
    pieces = {form[i : i + RUN] for form in spelled(token) for i in range(len(form) - RUN + 1)}
    return sorted({text[i : i + RUN] for i in range(len(text) - RUN + 1)} & pieces)


def test_the_oracle_sees_every_spelling() -> None:
    token = make_token("oracle")
    for name, spell in SPELLINGS.items():
        assert leaks(spell(token), token), name


# ------------------------------------------------------------------ in process, the fakes

log = logging.getLogger("leaky.handler")


def _leaky_router(way: str, spelling: Callable[[str], str], seen: list[str]) -> Router:
    router = Router()

    @router.handler("leak")
    async def leak(task: Task[Any]) -> dict[str, bool]:
        text = spelling(task.token)
        if way == "log line":
            log.warning("calling back: %s", text)
        elif way == "other thread":
            # A thread of the handler's own: no message context.
            thread = threading.Thread(target=log.warning, args=("from a thread: %s", text))
            thread.start()
            await anyio.to_thread.run_sync(thread.join)
        elif way == "unretrieved task exception":

            async def orphan() -> None:
                raise RuntimeError(text)

            asyncio.get_running_loop().create_task(orphan())  # the leak: nobody awaits it
            await anyio.sleep(0.01)
        elif way == "SendTaskFailure cause":
            raise TaskFailed("Leak.Refused", text)
        elif way == "dead-letter attributes":
            raise RuntimeError(text)
        seen.append(task.token)
        return {"ok": True}

    return router


async def _through_the_fakes(way: str, spelling: Callable[[str], str], token: str) -> str:
    """Everything the process let out for one task: its log lines, the cause Step
    Functions got, the dead-letter copy's attributes."""
    seen: list[str] = []
    queue = QueueSettings(name="tasks", wait_time_s=1, dead_letter_queue="tasks-dlq")
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    with json_logs("INFO") as logs:
        async with TestBroker(
            _leaky_router(way, spelling, seen),
            make_settings(queue, max_attempts=1),
            tracer_provider=provider if way == "span" else None,
        ) as tb:
            tb.sfn.new_token(token)
            if way == "span":
                # An AWS error quoting what it refused: recorded on the completion's span.
                error = client_error("ValidationException", f"refused: {spelling(token)}")
                tb.sfn.fail_next("send_task_success", error)
            body = orjson.dumps({"TaskToken": token, "input": {}, "type": "leak"})
            tb.sqs.put("tasks", body)
            await tb.wait_idle()
            if way == "unretrieved task exception":
                with anyio.fail_after(10):
                    while "never retrieved" not in logs.getvalue():
                        gc.collect()
                        await anyio.sleep(0.02)
        outcome = tb.sfn.outcomes.get(token)
        copies = tb.sqs.messages("tasks-dlq")
    recorded = [span.to_json() for span in spans.get_finished_spans()]
    if way == "span":
        assert any('"name": "exception"' in span for span in recorded), recorded
    if way in ("SendTaskFailure cause", "dead-letter attributes"):
        assert outcome is not None
        assert outcome.status == "failure", outcome
        assert outcome.cause, "no cause: the row shows nothing"
    else:
        assert seen == [token], "the handler did not run to the end"
    if way == "dead-letter attributes":
        assert len(copies) == 1
        assert "broker.detail" in copies[0].attributes
    else:
        assert copies == []
    attributes = [json.dumps(copy.attributes) for copy in copies]
    cause = outcome.cause if outcome is not None else None
    return "\n".join([logs.getvalue(), cause or "", *attributes, *recorded])


IN_PROCESS = (
    "log line",
    "other thread",
    "SendTaskFailure cause",
    "dead-letter attributes",
    "span",
    "unretrieved task exception",
)


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("way", IN_PROCESS)
async def test_no_piece_of_a_token_leaves_in_process(way: str, spelling: str) -> None:
    token = make_token(f"{way}/{spelling}")
    text = await _through_the_fakes(way, SPELLINGS[spelling], token)
    assert leaks(text, token) == []
    assert token_ref(token) in text  # hidden, yet the line still names which task


# ------------------------------------------------------------------ broker run, moto

_PLUGIN = """
    import asyncio, base64, json, logging, sys, threading, traceback, warnings
    from urllib.parse import quote, quote_plus
    from broker import Router

    router = Router()
    log = logging.getLogger("leaky")
    SPELLINGS = {spellings}

    @router.handler("leak")
    async def leak(task):
        text = eval(SPELLINGS[task.payload["spelling"]])(task.token)
        print("stdout:", text)
        print("stderr:", text, file=sys.stderr)
        sys.stderr.write(text[:40])  # a line written in pieces
        sys.stderr.write(text[40:] + "\\n")
        warnings.warn(text)
        threading.Thread(target=log.warning, args=(text,)).start()

        def crash():
            raise RuntimeError(text)

        threading.Thread(target=crash).start()  # threading.excepthook prints it

        async def orphan():
            raise RuntimeError(text)

        asyncio.get_running_loop().create_task(orphan())
        try:
            raise ValueError(text)
        except ValueError:
            traceback.print_exc()
        await asyncio.sleep(0.05)
        return {{"ok": True}}
"""

_SOURCES = {
    "raw": "lambda t: f'callback {t} failed'",
    "quote": "lambda t: f'GET https://cb.example.com/done?t={quote(t)}&x=1'",
    "quote(safe='')": "lambda t: f\"t={quote(t, safe='')}\"",
    "quote_plus": "lambda t: f'form t={quote_plus(t)}&a=b'",
    "json.dumps": "lambda t: json.dumps({'task': t})",
    "json with \\/": "lambda t: json.dumps({'task': t}).replace('/', '\\\\/')",
    "double-encoded": "lambda t: f\"next=/cb%3Ft%3D{quote(quote(t, safe=''), safe='')}\"",
    "base64": "lambda t: 'state ' + base64.b64encode(json.dumps({'t': t}).encode()).decode()",
    "base64url": "lambda t: 'state=' + base64.urlsafe_b64encode(t.encode()).decode()",
    "halves": "lambda t: f'first half {t[: len(t) // 2]}, and later: second half "
    "{t[len(t) // 2 :]}'",
    "repr": "lambda t: repr({'t': t.encode()}).replace(\"'t'\", \"'x'\")",
    "traceback": "lambda t: ''.join(traceback.format_exception(RuntimeError(t)))",
}


@pytest.fixture(scope="module")
def broker_run_output(aws: EmbeddedAws, tmp_path_factory: pytest.TempPathFactory) -> str:
    """stdout and stderr of one ``broker run`` whose handler leaks every spelling."""
    assert set(_SOURCES) == set(SPELLINGS)
    directory = tmp_path_factory.mktemp("leaky")
    source = textwrap.dedent(_PLUGIN).format(spellings=repr(_SOURCES))
    (directory / "leaky_plugin.py").write_text(source, encoding="utf-8")
    sqs = aws.client("sqs")
    queue = sqs.create_queue(QueueName=f"leaky-{time.time_ns()}")["QueueUrl"]
    for spelling in SPELLINGS:
        body = {"TaskToken": make_token(f"run/{spelling}"), "input": {"spelling": spelling}}
        sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(body))
    env = clean_env(
        **aws.env(),
        PYTHONPATH=str(directory),
        BROKER_QUEUES=json.dumps([{"name": queue, "default_handler": "leak", "wait_time_s": 1}]),
        BROKER_HANDLERS='["leaky_plugin:router"]',
        BROKER_ENTRY_POINTS="false",
        BROKER_LOG_FORMAT="json",
    )
    out, err = directory / "stdout", directory / "stderr"
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "broker", "run"],
            env=env,
            cwd=directory,
            stdout=stdout,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 60
        while err.read_text().count('"event":"outcome"') < len(SPELLINGS):
            assert process.poll() is None, err.read_text()
            assert time.monotonic() < deadline, err.read_text()[-3000:]
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    return out.read_text() + err.read_text()


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_no_piece_of_a_token_leaves_through_stdout_or_stderr_of_broker_run(
    broker_run_output: str, spelling: str
) -> None:
    token = make_token(f"run/{spelling}")
    for sign in ("stdout:", "stderr:", "never retrieved", "in thread", "UserWarning", "ValueError"):
        assert sign in broker_run_output, sign  # each way out was taken
    assert leaks(broker_run_output, token) == []
    assert token_ref(token) in broker_run_output


# ------------------------------------------------------------------ legitimate text


def test_a_handlers_ordinary_lines_and_causes_are_left_alone() -> None:
    token = make_token("ordinary")
    for text in (
        "order 42 shipped to Berlin in 3 parcels",
        "cause: order o-1234 refused (id 0f8fad5b-d9cb-469f-a165-70867728950e)",
        "see /work/wt/tokens/broker/observability/redact.py line 12, 100% done",
        'payload {"sku": "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345", "note": "a\\/b"}',
        "digest c2hhMjU2OmFiY2RlZjAxMjM0NTY3ODlhYmNkZWYwMTIzNDU2Nzg5",
        f"already hidden {token_ref(token)}",
    ):
        assert redact_token(text, token) == text
        assert redact(text, token) == text


def test_a_short_id_beside_a_token_stays_and_the_token_goes() -> None:
    token = make_token("short id")
    cause = f"order o-77 failed; retry with {quote(token)} later"
    assert redact_token(cause, token) == f"order o-77 failed; retry with {token_ref(token)} later"
