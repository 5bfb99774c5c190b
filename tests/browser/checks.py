"""What the browser suite asks the browser, each check proven both ways in
test_harness.py (it sees the bad case as well as the good one)."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Final

from tests.browser.site import LoopbackSite

if TYPE_CHECKING:
    from playwright.sync_api import Frame, Page

#: The URL Chromium gives a frame whose document it refused to show.
BLOCKED_FRAME_URL: Final = "chrome-error://chromewebdata/"

# Appends an inline <script> and waits for it to run or for the CSP to refuse it.
_TRY_INLINE_SCRIPT: Final = """() => new Promise((resolve) => {
    document.addEventListener("securitypolicyviolation",
        (event) => resolve("refused: " + event.violatedDirective));
    const script = document.createElement("script");
    script.textContent = "window.__ran = true";
    document.head.appendChild(script);
    setTimeout(() => resolve(window.__ran ? "ran" : "did not run"), 1000);
})"""


def inline_script_result(page: Page) -> str:
    """ "ran", or "refused: <directive>" when the page's CSP blocks inline scripts."""
    result: str = page.evaluate(_TRY_INLINE_SCRIPT)
    return result


def scripts_in(page: Page) -> int:
    """<script> elements plus elements with an inline event handler (on…=)."""
    count: int = page.evaluate(
        """() => document.scripts.length + [...document.querySelectorAll("*")].filter(
            (el) => [...el.attributes].some((a) => a.name.startsWith("on"))).length"""
    )
    return count


def frame_of(page: Page, site: LoopbackSite, url: str) -> Frame:
    """Open a page of another origin (the loopback site) that frames ``url``; the frame."""
    framing = site.page(
        "/framing", f'<!doctype html><iframe src="{html.escape(url)}" width="600"></iframe>'
    )
    page.goto(framing)
    page.wait_for_load_state("load")
    children = [frame for frame in page.frames if frame != page.main_frame]
    assert len(children) == 1, [frame.url for frame in page.frames]
    return children[0]


def is_blocked(frame: Frame) -> bool:
    return frame.url == BLOCKED_FRAME_URL
