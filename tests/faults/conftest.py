"""Prints the fault-injection figure table at the end of the pytest run, even with -q."""

from __future__ import annotations

import pytest

_TABLES = pytest.StashKey[list[str]]()


@pytest.fixture
def record_table(request: pytest.FixtureRequest) -> list[str]:
    return request.config.stash.setdefault(_TABLES, [])


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    for table in config.stash.get(_TABLES, []):
        terminalreporter.section("fault injection")
        terminalreporter.write_line(table)
