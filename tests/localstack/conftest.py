"""The LocalStack suite: the seeds' flows against a LocalStack started by ``make localstack``.

Every test here is marked ``localstack``.  When LocalStack does not answer on
``LOCALSTACK_ENDPOINT`` (default http://127.0.0.1:4566) the suite is skipped, with the
reason in pytest's summary (``make test`` passes ``-rs``) — unless ``REQUIRE_LOCALSTACK=1``
(CI sets it), which turns an unreachable LocalStack into a failure: the suite must run.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pytest

from broker.local.env import AWS_OVERRIDES
from broker.local.flows import SeedFlows, deploy_seed_flows
from broker.local.localstack import LocalStackAws, localstack_endpoint, localstack_health

_HERE = Path(__file__).parent


def _required() -> bool:
    return os.environ.get("REQUIRE_LOCALSTACK", "") not in ("", "0", "false", "no")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees every collected item in the session, not only this directory's.
    ours = [item for item in items if _HERE in item.path.parents]
    if not ours:
        return
    endpoint = localstack_endpoint()
    problem = localstack_health(endpoint)
    for item in ours:
        item.add_marker(pytest.mark.localstack)
        if problem is not None and not _required():
            item.add_marker(
                pytest.mark.skip(
                    reason=f"LocalStack suite skipped: {problem}. Start it with "
                    "`make localstack` (REQUIRE_LOCALSTACK=1 makes this a failure)"
                )
            )


@pytest.fixture(scope="session")
def localstack() -> LocalStackAws:
    endpoint = localstack_endpoint()
    problem = localstack_health(endpoint)
    if problem is not None:
        pytest.fail(f"REQUIRE_LOCALSTACK is set but LocalStack is not usable: {problem}")
    return LocalStackAws(endpoint)


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> str:
    """A name unique per test, readable in LocalStack's state when a test fails."""
    return re.sub(r"[^A-Za-z0-9-]", "-", request.node.name)[:40] + "-" + uuid.uuid4().hex[:6]


@pytest.fixture
def seed_flows(localstack: LocalStackAws, unique: str) -> SeedFlows:
    return deploy_seed_flows(localstack, prefix=unique)


@pytest.fixture(autouse=True)
def localstack_env(localstack: LocalStackAws, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in AWS_OVERRIDES:
        monkeypatch.delenv(name, raising=False)
    env = localstack.env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env
