"""The browser suite's harness, checked on pages of its own: the browser is Debian's
Chromium, it clicks through a form, and each check sees both answers."""

from __future__ import annotations

import re
import subprocess
from typing import TYPE_CHECKING, Final

from tests.browser.checks import frame_of, inline_script_result, is_blocked, scripts_in
from tests.browser.chromium import chromium_path
from tests.browser.conftest import Tab
from tests.browser.site import Answer, LoopbackSite, loopback_site

if TYPE_CHECKING:
    from playwright.sync_api import Browser

#: The headers the decision endpoint sends (docs/decisions.md).
GUARDED: Final = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
}
STAND_IN: Final = """<!doctype html><html><head><meta charset="utf-8"><title>Decide</title>
</head><body><h1>Refund &lt;b&gt;#42&lt;/b&gt;</h1>
<form method="post"><button type="submit">Approve</button></form></body></html>"""


def test_the_browser_is_debians_chromium(browser: Browser) -> None:
    path = chromium_path()
    assert path is not None
    printed = subprocess.run(
        [path, "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    assert browser.version in printed, (browser.version, printed)


def test_a_form_page_is_opened_and_its_button_posts(
    tab_without_js: Tab, site: LoopbackSite
) -> None:
    def decide(method: str, path: str, body: bytes) -> Answer:
        if method == "POST":
            return 200, {"Content-Type": "text/html"}, b"<p>approved</p>"
        return 200, {"Content-Type": "text/html; charset=utf-8", **GUARDED}, STAND_IN.encode()

    site.routes["/decisions/x"] = decide
    page = tab_without_js.page
    response = page.goto(site.url("/decisions/x"))
    assert response is not None
    assert response.status == 200
    assert page.get_by_role("heading").inner_text() == "Refund <b>#42</b>"
    page.get_by_role("button", name="Approve").click()
    page.wait_for_load_state("load")
    assert page.inner_text("body") == "approved"
    decisions = [request for request in site.requests if request[1] != "/favicon.ico"]
    assert decisions == [("GET", "/decisions/x"), ("POST", "/decisions/x")]


def test_the_script_checks_see_a_script_run_and_one_refused(tab: Tab, site: LoopbackSite) -> None:
    page = tab.page
    page.goto(site.page("/open", "<p onclick='x()'>open</p><script>var a = 1</script>"))
    assert scripts_in(page) == 2
    assert inline_script_result(page) == "ran"
    page.goto(site.page("/guarded", STAND_IN, GUARDED))
    assert scripts_in(page) == 0
    assert inline_script_result(page) == "refused: script-src-elem"


def test_the_framing_check_sees_a_frame_blocked_and_one_shown(tab: Tab, site: LoopbackSite) -> None:
    # The framed page comes from another origin (port) than the framing one.
    with loopback_site() as other:
        shown = frame_of(tab.page, site, other.page("/plain", STAND_IN))
        assert not is_blocked(shown)
        assert shown.get_by_role("button", name="Approve").count() == 1

        blocked = frame_of(tab.page, site, other.page("/guarded", STAND_IN, GUARDED))
        assert is_blocked(blocked)
        assert blocked.get_by_role("button").count() == 0
        assert any(re.search(r"violates .*frame-ancestors 'none'", line) for line in tab.console), (
            tab.console
        )
