"""Fixtures for the integration tests: one embedded moto server for the whole session."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.local.env import AWS_OVERRIDES
from broker.local.flows import SeedFlows, deploy_seed_flows
from broker.local.moto import EmbeddedAws

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # This hook sees every collected item in the session, not only this directory's.
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def aws() -> Iterator[EmbeddedAws]:
    with EmbeddedAws() as emulator:
        yield emulator


@pytest.fixture
def seed_flows(aws: EmbeddedAws, request: pytest.FixtureRequest) -> SeedFlows:
    aws.reset()
    # Unique per test, and readable in moto's state when a test fails.
    prefix = re.sub(r"[^A-Za-z0-9-]", "-", request.node.name)[:40] + "-" + uuid.uuid4().hex[:6]
    return deploy_seed_flows(aws, prefix=prefix)


@pytest.fixture
def aws_env(aws: EmbeddedAws, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in AWS_OVERRIDES:
        monkeypatch.delenv(name, raising=False)
    env = aws.env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env
