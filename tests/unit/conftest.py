from __future__ import annotations

from typing import Any

import pytest

from broker import BrokerSettings, QueueSettings


def make_settings(*queues: QueueSettings | str, **overrides: Any) -> BrokerSettings:
    """Settings for the fakes: short polls, no backoff waits, no plugins."""
    values: dict[str, Any] = {
        "queues": tuple(
            QueueSettings(name=q, wait_time_s=1) if isinstance(q, str) else q
            for q in (queues or ("tasks",))
        ),
        "entry_points": False,
        "delete_linger_s": 0.01,
        "retry_base_delay_s": 0,
        "retry_max_delay_s": 0,
    }
    values.update(overrides)
    return BrokerSettings(**values)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
