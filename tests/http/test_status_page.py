"""The status page (``GET /``) in a real browser — Debian's Chromium, headless, driven by
Playwright — against a real member: it shows the member and its leader, and follows the
registry live. A service registered through the SDK after the page has loaded appears (so it
came through the page's SSE stream, not its first listing), its health change and a config
document's generations show up, and deregistering removes it.

Needs ``/usr/bin/chromium`` (``apt-get install -y chromium``; Playwright's own browser
downloads are not used). Without it the test fails, saying how to install it — unless
``DISCOVERD_NO_CHROMIUM`` says why CI could not install it (``.ci/run`` sets it), and then it
is skipped with that reason.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from rest_helpers import own_member

from discoverd.sdk import Client
from discoverd.testing.cluster import MemberProcess

CHROMIUM = "/usr/bin/chromium"
NO_CHROMIUM = "DISCOVERD_NO_CHROMIUM"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 10_000  # every wait on the page is bounded by this


def chromium() -> str:
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    reason = os.environ.get(NO_CHROMIUM)
    if reason:
        pytest.skip(f"Chromium could not be installed here ({NO_CHROMIUM}): {reason}")
    pytest.fail(f"the status page test needs Debian's Chromium at {CHROMIUM}: run "
                f"'apt-get install -y chromium' (or set {NO_CHROMIUM} to the reason it "
                "cannot be installed)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    path = chromium()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, headless=True, args=ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def member(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MemberProcess]:
    with own_member(tmp_path_factory.mktemp("status-page")) as m:
        yield m


class Watched:
    """A page with every script error, console error and off-origin request noted."""

    def __init__(self, page: Page, origin: str) -> None:
        self.page = page
        self.problems: list[str] = []
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("console", lambda m: self.problems.append(f"console {m.type}: {m.text}")
                if m.type == "error" else None)
        page.on("request", lambda r: None if r.url.startswith(origin)
                else self.problems.append(f"request off the origin: {r.url}"))
        page.on("response", lambda r: self.problems.append(f"HTTP {r.status}: {r.url}")
                if r.status >= 400 else None)

    def wait(self, selector: str, state: str = "attached") -> str:
        handle = self.page.wait_for_selector(selector, state=state,  # type: ignore[arg-type]
                                             timeout=WAIT_MS)
        return handle.text_content() or "" if handle is not None else ""


def test_the_page_follows_members_services_and_config(browser: Browser,
                                                      member: MemberProcess) -> None:
    origin = f"http://127.0.0.1:{member.client_port}"
    me = f"{member.status()['header']['member_id']:x}"
    page = browser.new_page()
    watched = Watched(page, origin)
    try:
        page.goto(origin + "/", timeout=WAIT_MS)
        assert watched.wait(f'[data-member="{me}"]').startswith("m1")
        page.wait_for_function("id => document.getElementById('leader').textContent"
                               ".includes(id)", arg=me, timeout=WAIT_MS)
        watched.wait("#services .empty")
        # both streams are open (their watches exist), so what follows arrives through them
        watched.wait('#connection[data-streams="/config/ /services/"]')

        with Client(f"127.0.0.1:{member.client_port}") as client:
            reg = client.register("web", id="web-1", address="10.1.2.3", port=8080,
                                  zone="eu-1", ttl=10, handle_sigterm=False)
            row = watched.wait('[data-instance="web/web-1"][data-health="passing"]')
            assert "10.1.2.3:8080" in row
            assert "eu-1" in row
            reg.set_health("draining")
            watched.wait('[data-instance="web/web-1"][data-health="draining"]')

            client.put_config("app", {"port": 1})
            watched.wait('[data-config="app"][data-generation="1"]')
            client.put_config("app", {"port": 2})
            watched.wait('[data-config="app"][data-generation="2"]')

            reg.close()
            watched.wait('[data-instance="web/web-1"]', state="detached")
        revision = member.status()["header"]["revision"]
        page.wait_for_function("r => Number(document.getElementById('revision').textContent)"
                               " >= r", arg=revision, timeout=WAIT_MS)
    finally:
        page.close()
    assert not watched.problems, watched.problems


def test_the_page_lists_what_exists_before_it_loads(browser: Browser,
                                                    member: MemberProcess) -> None:
    with Client(f"127.0.0.1:{member.client_port}") as client:
        client.register("db", id="db-1", port=5432, ttl=10, health="warning",
                        handle_sigterm=False)
        client.put_config("feature/flags", {"on": True})
        page = browser.new_page()
        watched = Watched(page, f"http://127.0.0.1:{member.client_port}")
        try:
            page.goto(f"http://127.0.0.1:{member.client_port}/", timeout=WAIT_MS)
            watched.wait('[data-instance="db/db-1"][data-health="warning"]')
            watched.wait('[data-config="feature/flags"][data-generation="1"]')
        finally:
            page.close()
    assert not watched.problems, watched.problems
