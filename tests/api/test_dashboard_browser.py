"""The dashboard in a real headless Chromium against a real `python -m api`: log in, retry, watch it turn delivered.

Needs Debian's ``chromium`` at /usr/bin/chromium and the ``playwright`` package (requirements-dev.txt);
``make test`` installs both. Playwright drives the system browser: ``playwright install`` is never needed.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.conftest import API_KEY, WEBHOOK_SECRET
from tests.support.processes import ROOT, Process, Processes, child_env
from tests.support.receiver import Receiver, Reply
from tests.support.smtp import free_port
from tests.support.waiting import eventually

if TYPE_CHECKING:  # imported for real inside the test, after checking it is installed
    from playwright.async_api import ViewportSize

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# The screenshot in docs/ is refreshed only on request, so `make test` leaves the tree clean:
#   UPDATE_SCREENSHOT=1 .venv/bin/python -m pytest tests/api/test_dashboard_browser.py
DOCS_SCREENSHOT = ROOT / "docs" / "dashboard.png"
PHONE: ViewportSize = {"width": 390, "height": 844}
DESKTOP: ViewportSize = {"width": 1280, "height": 860}
BEARER = {"Authorization": f"Bearer {API_KEY}"}
TIMEOUT_MS = 10_000


def _require_browser() -> None:
    """Fail (never skip) with what is missing and how to get it."""
    missing = []
    if not CHROMIUM.exists():
        missing.append(
            f"{CHROMIUM} is missing. `make test` installs it (apt-get install chromium) when run as root on a "
            "Debian/Ubuntu machine with apt-get; otherwise install Debian's `chromium` package yourself."
        )
    if importlib.util.find_spec("playwright") is None:
        missing.append(
            "the Python package `playwright` is missing from this interpreter "
            f"({sys.executable}): `make test` installs it from requirements-dev.txt. "
            "Do not run `playwright install`: the suite drives the system Chromium."
        )
    if missing:
        pytest.fail("the browser test cannot run:\n- " + "\n- ".join(missing), pytrace=False)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Process, str]]:
    port = free_port()
    env = child_env(
        HOST="127.0.0.1",
        PORT=str(port),
        API_KEY=API_KEY,
        WEBHOOK_SECRET=WEBHOOK_SECRET,
        WEBHOOK_ALLOW_PRIVATE="true",
        WEBHOOK_TIMEOUT_S="5",
        LOG_LEVEL="WARNING",
    )
    with Processes(tmp_path) as processes:
        yield processes.start("api", [sys.executable, "-m", "api"], env), f"http://127.0.0.1:{port}"


async def _failed_delivery(client: httpx.AsyncClient, receiver: Receiver, path: str) -> tuple[str, str]:
    receiver.script(path, Reply(status=400, body=b"rejected by the test receiver"))
    body = {"to": [{"channel": "webhook", "address": receiver.url(path)}], "subject": "Invoice paid", "text": "t"}
    response = await client.post("/notify", json=body, headers=BEARER)
    assert response.status_code == 202, response.text
    accepted = response.json()

    async def failed() -> bool:
        view = (await client.get(f"/notifications/{accepted['id']}", headers=BEARER)).json()
        return bool(view["status"] == "failed")

    await eventually(failed, what="the webhook delivery to fail")
    return accepted["id"], accepted["deliveries"][0]["id"]


async def _start(client: httpx.AsyncClient, process: Process) -> None:
    async def ready() -> bool:
        assert process.running, f"the server exited during start-up:\n{process.log()}"
        try:
            return (await client.get("/healthz")).status_code == 200
        except httpx.TransportError:
            return False

    await eventually(ready, timeout_s=20, what="the server to start")


async def test_log_in_retry_a_failed_delivery_and_watch_it_delivered(
    server: tuple[Process, str], receiver: Receiver, tmp_path: Path
) -> None:
    _require_browser()
    from playwright.async_api import async_playwright, expect

    process, base_url = server
    failing_path = "/orders/" + "a1b2c3d4" * 10  # long on purpose: the phone layout must wrap it
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=10) as client,
        async_playwright() as playwright,
    ):
        await _start(client, process)
        notification_id, delivery_id = await _failed_delivery(client, receiver, failing_path)
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
            page = await context.new_page()
            problems: list[str] = []
            page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: problems.append(str(exc)))

            await page.goto(f"{base_url}/dashboard")
            await expect(page).to_have_url(f"{base_url}/dashboard/login")
            await page.get_by_label("API key").fill("not-the-key")
            await page.get_by_role("button", name="Log in").click()
            await expect(page.get_by_role("alert")).to_have_text("That is not the API key.")
            await page.get_by_label("API key").fill(API_KEY)
            await page.get_by_role("button", name="Log in").click()
            await expect(page).to_have_url(f"{base_url}/dashboard")
            assert problems == ["Failed to load resource: the server responded with a status of 401 (Unauthorized)"]
            problems.clear()

            failed_row = page.locator(f'#failed [data-delivery-id="{delivery_id}"]')
            recent_row = page.locator(f'#recent [data-delivery-id="{delivery_id}"]')
            await expect(failed_row).to_contain_text("HTTP 400")
            await expect(recent_row).to_have_attribute("data-status", "failed")
            await expect(page.locator('.count[data-status="failed"] .count-n')).to_have_text("1")
            await expect(page.locator("#live-state")).to_have_attribute("data-state", "live", timeout=TIMEOUT_MS)
            navigations: list[str] = []
            page.on("framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None)
            await page.evaluate("window.__noReload = 'still the same document'")

            # Live: a notification sent through the API while the page is open appears on it by itself.
            welcome = {
                "to": [{"channel": "webhook", "address": receiver.url("/fine")}],
                "subject": "Welcome",
                "text": "t",
            }
            sent = await client.post("/notify", json=welcome, headers=BEARER)
            assert sent.status_code == 202
            await expect(page.locator(f'[data-notification-id="{sent.json()["id"]}"]')).to_have_attribute(
                "data-status", "delivered", timeout=TIMEOUT_MS
            )
            await expect(page.locator('.count[data-status="delivered"] .count-n')).to_have_text("1")

            # Phone: with mobile emulation Chromium widens the layout viewport to fit content that is too
            # wide, so check both that it stayed at the device width and that nothing scrolls sideways.
            scroll_width = await page.evaluate("document.scrollingElement.scrollWidth")
            inner_width = await page.evaluate("window.innerWidth")
            assert inner_width == PHONE["width"], f"the layout is {inner_width}px wide on a {PHONE['width']}px phone"
            assert scroll_width <= inner_width, f"horizontal scroll on a phone: {scroll_width}px > {inner_width}px"

            await page.set_viewport_size(DESKTOP)
            shot = DOCS_SCREENSHOT if os.environ.get("UPDATE_SCREENSHOT") == "1" else tmp_path / "dashboard.png"
            await page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000, "the screenshot shows a rendered page"
            await page.set_viewport_size(PHONE)

            # The receiver's script is used up: the next attempt gets its default 200.
            await failed_row.get_by_role("button", name="Retry", exact=True).click()
            await expect(recent_row).to_have_attribute("data-status", "delivered", timeout=TIMEOUT_MS)
            await expect(recent_row.locator(".status")).to_have_text("delivered")
            await expect(failed_row).to_have_count(0)
            await expect(page.locator('.count[data-status="failed"] .count-n')).to_have_text("0")
            await expect(page.locator(f'[data-notification-id="{notification_id}"]')).to_have_attribute(
                "data-status", "delivered"
            )
            await expect(page.locator("#notice")).to_contain_text(delivery_id)
            assert await page.evaluate("window.__noReload") == "still the same document"
            assert navigations == [], f"the page navigated: {navigations}"
            assert problems == [], problems
        finally:
            await browser.close()

    hits = receiver.received(failing_path)
    assert [r.verified for r in hits] == [True, True]
    assert hits[0].headers["webhook-id"] == hits[1].headers["webhook-id"] == delivery_id
