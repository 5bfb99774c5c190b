"""Fixtures for the stub's tests: one in-process stub per test, and aioboto3 clients on it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import aioboto3
import pytest
from aiobotocore.config import AioConfig

from awsstub import StubControl, StubServer
from broker.local.env import AWS_OVERRIDES


@pytest.fixture(autouse=True)
def _dummy_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in AWS_OVERRIDES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_REGION", "us-east-1")


@pytest.fixture
async def stub() -> AsyncIterator[StubServer]:
    async with StubServer() as server:
        yield server


class AsyncControl:
    """StubControl is synchronous; the stub shares this loop, so call it from a thread."""

    def __init__(self, endpoint_url: str) -> None:
        self.sync = StubControl(endpoint_url)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.sync, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(method, *args, **kwargs)

        return call


@pytest.fixture
def control(stub: StubServer) -> AsyncControl:
    return AsyncControl(stub.endpoint_url)


def client_config(attempts: int = 1) -> AioConfig:
    return AioConfig(
        retries={"mode": "standard", "total_max_attempts": attempts},
        connect_timeout=5,
        read_timeout=30,
    )


async def _client(stub: StubServer, service: Literal["sqs", "stepfunctions"]) -> AsyncIterator[Any]:
    session = aioboto3.Session(region_name="us-east-1")
    config = client_config()
    async with session.client(service, endpoint_url=stub.endpoint_url, config=config) as client:
        yield client


@pytest.fixture
async def sqs(stub: StubServer) -> AsyncIterator[Any]:
    async for client in _client(stub, "sqs"):
        yield client


@pytest.fixture
async def sfn(stub: StubServer) -> AsyncIterator[Any]:
    async for client in _client(stub, "stepfunctions"):
        yield client
