"""The browser suite: decision pages in a real headless Chromium.

Every test here is marked ``browser``.  Without Chromium (Debian's ``chromium`` package)
or the ``playwright`` package the suite is skipped with the reason in pytest's summary
(``make test`` passes ``-rs``), unless ``CI`` is true: then a missing browser is a
failure, because CI must run this suite (``.ci/run`` installs the browser).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from broker.local.moto import EmbeddedAws
from tests.browser.chromium import chromium_path, chromium_problem, required
from tests.browser.site import LoopbackSite, loopback_site

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees every collected item in the session, not only this directory's.
    ours = [item for item in items if _HERE in item.path.parents]
    if not ours:
        return
    problem = chromium_problem()
    for item in ours:
        item.add_marker(pytest.mark.browser)
        if problem is not None and not required():
            item.add_marker(
                pytest.mark.skip(
                    reason=f"browser suite skipped: {problem} (CI=true makes this a failure)"
                )
            )


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium for one module (Playwright's sync API keeps its own loop: it is
    stopped before another module's asyncio tests run)."""
    problem = chromium_problem()
    if problem is not None:
        pytest.fail(f"CI is set but the browser suite cannot run: {problem}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path(), headless=True)
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Tab:
    """A page in a fresh browser context, with what its console said."""

    page: Page
    console: list[str] = field(default_factory=list)


def _open_tab(browser: Browser, *, javascript: bool) -> Iterator[Tab]:
    context = browser.new_context(java_script_enabled=javascript)
    context.set_default_timeout(15_000)
    try:
        tab = Tab(context.new_page())
        tab.page.on("console", lambda message: tab.console.append(message.text))
        yield tab
    finally:
        context.close()


@pytest.fixture
def tab(browser: Browser) -> Iterator[Tab]:
    yield from _open_tab(browser, javascript=True)


@pytest.fixture
def tab_without_js(browser: Browser) -> Iterator[Tab]:
    """A browser that runs no script at all: the page must work without one."""
    yield from _open_tab(browser, javascript=False)


@pytest.fixture
def site() -> Iterator[LoopbackSite]:
    with loopback_site() as served:
        yield served


@pytest.fixture(scope="module")
def aws() -> Iterator[EmbeddedAws]:
    # Module scope: one embedded moto per process runs executions (MOTO_PORT), and this
    # one is stopped before tests/integration starts its own.
    with EmbeddedAws() as emulator:
        yield emulator
