"""botocore at DEBUG on the embedded moto server: no whole token in any log line.

botocore prints every request and response body at DEBUG, ReceiveMessage answers
included (every message body, so every token), outside any message's context; moto's
tokens are short UUIDs that the length rule cannot catch.
"""

from __future__ import annotations

import json
from typing import Any

from broker import BrokerSettings, QueueSettings, Router, Task
from broker.local.flows import SeedFlows
from broker.local.moto import EmbeddedAws
from broker.observability.logs import configure_logging
from tests.flows import run_executions, running
from tests.observing import json_logs


async def test_botocore_debug_logs_hold_no_token_and_no_access_key(
    aws: EmbeddedAws, seed_flows: SeedFlows, aws_env: dict[str, str]
) -> None:
    tokens: list[str] = []
    router = Router()

    @router.handler("callback")
    async def callback(task: Task[Any]) -> dict[str, bool]:
        tokens.append(task.token)
        return {"ok": True}

    settings = BrokerSettings(
        queues=(
            QueueSettings(
                name=seed_flows.queues["callback"], default_handler="callback", wait_time_s=1
            ),
        ),
        entry_points=False,
        http_port=None,
    )
    with json_logs("INFO") as buffer:
        # What BROKER_LOG_LEVELS='{"botocore": "DEBUG", "aiobotocore": "DEBUG"}' does.
        configure_logging(
            "INFO", "json", {"botocore": "DEBUG", "aiobotocore": "DEBUG"}, stream=buffer
        )
        async with running(settings, router):
            results = await run_executions(
                aws, seed_flows.state_machines["callback"], [{"n": n} for n in range(3)]
            )
    assert [r.status for r in results] == ["SUCCEEDED"] * 3
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    bodies = [line for line in lines if "ReceiveMessage" in line["message"]]
    assert bodies, "botocore logged no ReceiveMessage at DEBUG: the test shows nothing"
    text = buffer.getvalue()
    assert "MyTaskToken" in text  # the bodies are there, their tokens are not
    assert len(tokens) == 3
    for token in tokens:
        assert len(token) < 120  # a short token: only the field rule can catch it
        assert token not in text
    assert f"Credential={aws_env['AWS_ACCESS_KEY_ID']}/" not in text
    assert "Credential=<access-key-id>/" in text
