"""Every contract test runs once per AWS double: the fakes, the stub, moto, LocalStack.

moto is one embedded server for this folder (Step Functions execution on, ``MOTO_PORT``
set by ``EmbeddedAws``), stopped before the next folder starts its own.  LocalStack is
used when it answers on ``LOCALSTACK_ENDPOINT`` (default http://127.0.0.1:4566); when it
does not, its rows are skipped with the reason, unless ``REQUIRE_LOCALSTACK=1``, which
makes them fail, as in tests/localstack.
"""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncIterator, Iterator

import pytest

from broker.local.env import AWS_OVERRIDES
from broker.local.localstack import localstack_endpoint, localstack_health
from broker.local.moto import EmbeddedAws

from .doubles import Double, Fakes, LocalStack, Moto, emulator, stub

DOUBLES = ("fakes", "stub", "moto", "localstack")


@functools.cache
def _localstack_problem() -> str | None:
    return localstack_health(localstack_endpoint())


def _localstack_required() -> bool:
    return os.environ.get("REQUIRE_LOCALSTACK", "") not in ("", "0", "false", "no")


@pytest.fixture(autouse=True)
def _no_aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Endpoints and credentials are given to each client; nothing from the environment.
    for name in AWS_OVERRIDES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="package")
def moto_server() -> Iterator[EmbeddedAws]:
    with EmbeddedAws() as aws:
        yield aws


@pytest.fixture(params=DOUBLES)
async def double(request: pytest.FixtureRequest) -> AsyncIterator[Double]:
    kind = request.param
    if kind == "fakes":
        yield Fakes()
    elif kind == "stub":
        async with stub() as the_stub:
            yield the_stub
    elif kind == "moto":
        server: EmbeddedAws = request.getfixturevalue("moto_server")
        async with emulator(Moto, server.endpoint_url) as the_moto:
            yield the_moto
    else:
        problem = _localstack_problem()
        if problem is not None:
            if _localstack_required():
                pytest.fail(f"REQUIRE_LOCALSTACK is set but LocalStack is not usable: {problem}")
            pytest.skip(f"LocalStack not up: {problem} (REQUIRE_LOCALSTACK=1 makes this a failure)")
        async with emulator(LocalStack, localstack_endpoint()) as the_localstack:
            yield the_localstack
