"""The dashboard in a real browser: Playwright drives Debian's Chromium against the real app in
devhost, on Azurite, with the local pool of agent processes.

Set DASHBOARD_SCREENSHOT=docs/dashboard.png to refresh the screenshot the README shows.
"""
from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"  # Debian's package (`make install`); Playwright's own is unused
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
UI_TIMEOUT_MS = 150_000  # a job goes through boot, claim and callback; generous under load


@pytest.fixture()
def browser(tmp_path: Path) -> Iterator[BrowserContext]:
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 800})
        try:
            yield context
        finally:
            context.close()


def _open(browser: BrowserContext, base: str, key: str) -> Page:
    page = browser.new_page()
    page.goto(f"{base}/api/dashboard")
    page.fill("#key-input", key)
    page.press("#key-input", "Enter")
    return page


def _job_row(page: Page, blob: str):
    return page.locator("#jobs-table tbody tr[data-job]").filter(has_text=blob)


def test_pool_and_jobs_update_live_without_reload(start_app, browser, tmp_path) -> None:
    app = start_app(E2E_SLOW_SECONDS="5")
    key = app.env["DEVHOST_FUNCTION_KEY"]
    page = _open(browser, app.base, key)
    pool_rows = page.locator("#pool-table tbody tr")
    expect(pool_rows).to_have_count(3, timeout=30_000)
    expect(pool_rows.locator("th")).to_have_text(["vm01", "vm02", "vm03"])
    expect(pool_rows.first).to_contain_text("deallocated")
    assert "code=" not in page.url and key not in page.url
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))

    app.upload("live/ok.json", b'{"n": 1}')
    ok = _job_row(page, "live/ok.json")
    expect(ok).to_have_count(1, timeout=60_000)
    expect(ok.locator(".badge")).to_have_text("succeeded", timeout=UI_TIMEOUT_MS)
    expect(ok).to_contain_text("vm0")  # the VM that ran it

    app.upload("live/bad.json", b'{"fail": true}')
    bad = _job_row(page, "live/bad.json")
    expect(bad.locator(".badge")).to_have_text("failed", timeout=UI_TIMEOUT_MS)
    expect(bad).to_contain_text("refusing input marked fail")
    bad.get_by_role("button", name="Details").click()
    detail = page.locator("tr.detail")
    expect(detail).to_contain_text("Attempts")
    expect(detail.locator("pre")).to_contain_text("refusing input marked fail")

    # A run in progress: its progress bar moves while files are still being processed.
    for i in range(6):
        app.upload(f"batch/f{i}.json", b'{"slow": 1, "n": %d}' % i)
    response = app.post("/api/runs", json={"prefix": "batch/", "runId": "nightly-run"})
    assert response.status_code == 202, response.text
    run = page.locator("#runs li[data-run='nightly-run']")
    expect(run).to_contain_text("of 6", timeout=60_000)
    expect(page.locator("#jobs-table tbody tr[data-status='running']")).not_to_have_count(
        0, timeout=UI_TIMEOUT_MS)
    shot = os.environ.get("DASHBOARD_SCREENSHOT")
    if shot:  # for the picture, wait until the bar is part way (best effort, not asserted)
        with contextlib.suppress(AssertionError):
            expect(run.locator("progress")).to_have_attribute(
                "value", re.compile("^[1-5]$"), timeout=UI_TIMEOUT_MS)
    page.screenshot(path=shot or str(tmp_path / "dashboard.png"), full_page=True)
    expect(run).to_contain_text("6 of 6 (100%)", timeout=UI_TIMEOUT_MS)
    expect(run.locator(".badge")).to_have_text("completed", timeout=UI_TIMEOUT_MS)
    assert navigations == [], "the page reloaded"
    expect(page.locator("#live")).to_contain_text("Live")


def test_a_refused_key_shows_a_clear_message(start_app, browser) -> None:
    app = start_app(POOL_MAX_RUNNING="0")
    page = _open(browser, app.base, "not-the-key")
    error = page.locator("#key-error")
    expect(error).to_be_visible(timeout=30_000)
    expect(error).to_contain_text("function key was refused (HTTP 401)")
    expect(page.locator("#views")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('vmpool.functionKey')") is None
    page.fill("#key-input", app.env["DEVHOST_FUNCTION_KEY"])
    page.press("#key-input", "Enter")
    expect(page.locator("#pool-table tbody tr")).to_have_count(3, timeout=30_000)
    expect(error).to_be_hidden()
    # Phone width: one column of cards, nothing wider than the screen.
    page.set_viewport_size({"width": 390, "height": 844})
    expect(page.locator("#pool-table thead")).to_be_hidden()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    # Keyboard: the controls are reached with Tab, in order, from the top.
    page.locator("h1").click()  # the starting point of sequential focus navigation
    reached = []
    for _ in range(4):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("document.activeElement.id || "
                                     "document.activeElement.textContent.trim()"))
    assert reached == ["forget-key", "Pool", "Queue", "Runs"]


def test_assets_are_served_and_unknown_names_refused(start_app) -> None:
    app = start_app(POOL_MAX_RUNNING="0")
    page = app.http.get(app.base + "/api/dashboard", headers={"x-functions-key": ""}, timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    script = app.http.get(app.base + "/api/dashboard/app.js", timeout=10)
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    for name in ("..%2Fhost.json", "index.html", "nope.js", "%2Fetc%2Fpasswd", "app.py"):
        refused = app.http.get(f"{app.base}/api/dashboard/{name}", timeout=10)
        assert refused.status_code == 404, name
        assert refused.json()["error"]["code"] == "NotFound", name
