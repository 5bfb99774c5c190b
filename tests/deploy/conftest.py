"""One embedded moto server for the tests of this folder that start the broker against AWS."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from broker.local.moto import EmbeddedAws


@pytest.fixture(scope="package")
def moto_server() -> Iterator[EmbeddedAws]:
    with EmbeddedAws() as aws:
        yield aws


@pytest.fixture
def aws(moto_server: EmbeddedAws) -> EmbeddedAws:
    """moto holding nothing: each test creates exactly the resources it names."""
    moto_server.reset()
    return moto_server
