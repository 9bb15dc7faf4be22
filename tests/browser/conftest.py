"""Browser tests: Playwright driving Debian's headless Chromium (``/usr/bin/chromium``).

Chromium comes from the operating system's packages, installed by scripts/ensure_chromium.sh
(``make install`` runs it; so does this setup when it is missing); Playwright's own browser
downloads are never used. The tests are plain sync tests: Playwright's sync API refuses to run
inside a running event loop, so the API under test is served from its own thread and the traffic
runs on a loop of its own (traffic.py). Each test's screenshots go to ``test-artifacts/browser/``.

Fixtures others reuse: ``browser_page`` (a fresh ``playwright.sync_api.Page``), ``chromium``.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parents[2]
ENSURE_SCRIPT = ROOT / "scripts" / "ensure_chromium.sh"
ARTIFACTS = ROOT / "test-artifacts" / "browser"
# Milliseconds a page action or an ``expect`` waits for its outcome: generous, since CI's two shared
# cores may be slow; a test that passes waits only as long as the page takes.
WAIT_MS = 15_000
expect.set_options(timeout=WAIT_MS)


def _chromium() -> Path:
    """The system Chromium, installed now if missing; a skip (a failure in CI) if it cannot be."""
    if not CHROMIUM.exists():
        subprocess.run(["sh", str(ENSURE_SCRIPT)], check=False, timeout=900)
    if not CHROMIUM.exists():
        message = f"no {CHROMIUM}: run scripts/ensure_chromium.sh as root (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture
def chromium() -> Iterator[Browser]:
    """A headless Chromium for one test.

    Per test, not per session: while Playwright's sync API is started it leaves its own event loop
    marked as running in the main thread, and pytest-asyncio's session loop then refuses to run the
    async tests that follow. Stopping it after each test hands the thread back clean."""
    executable = _chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(executable), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def browser_page(chromium: Browser) -> Iterator[Page]:
    """A page in a fresh browser context (no cookies shared between tests), 1280x860."""
    context = chromium.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    try:
        yield page
    finally:
        context.close()


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    """Where a test writes its screenshots: ``test-artifacts/browser/<test name>/``."""
    folder = ARTIFACTS / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
