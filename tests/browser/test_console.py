"""The web console in a real browser: headless Chromium against a real API (uvicorn, real Redis),
with jobs flowing through the scheduler, an arq worker and the emulator (traffic.py).

Waiting is on outcomes only: Playwright's ``expect`` retries an assertion until the page shows it
(the lanes table refreshes itself), and the pipeline is stepped on its virtual clock until the
ledger shows the state a test needs. Screenshots of every page go to ``test-artifacts/browser/``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis as sync_redis
from playwright.sync_api import Page, expect
from redis.asyncio import Redis

from api.app import create_app
from config.settings import (
    ConsoleSettings,
    HttpSettings,
    LaneDefaults,
    ProviderSettings,
    SchedulerSettings,
    Settings,
    WebhookSettings,
)
from emulator.server import EmulatorControl
from scheduler.ledger import keys
from tests.api.harness import ACME, serve
from tests.browser.traffic import Traffic, running_traffic
from tests.conftest import make_settings

pytestmark = pytest.mark.timeout(300)

WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # acme's in tests.conftest.make_settings


@dataclass
class Console:
    url: str
    settings: Settings
    traffic: Traffic
    http: httpx.Client  # to the same API, for enqueueing and for the JSON the pages must agree with

    def enqueue(
        self, headers: dict[str, str], feature: str, count: int = 1, callback_url: str | None = None
    ) -> list[str]:
        jobs = []
        for i in range(count):
            item: dict[str, object] = {
                "provider": "openai",
                "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"{feature} {i}"}]},
                "deadline_in": 3600,
                "tags": {"feature": feature},
            }
            if callback_url:
                item["callback_url"] = callback_url
            jobs.append(item)
        answer = self.http.post("/v1/jobs/bulk", json={"jobs": jobs}, headers=headers)
        assert answer.status_code == 200, answer.text
        return [entry["job"]["id"] for entry in answer.json()["results"]]

    def finish(self, job_ids: list[str], delivered: bool = False) -> None:
        """Step the pipeline until the jobs ended (and their webhooks were delivered or died)."""

        async def done(redis: Redis) -> bool:
            for job_id in job_ids:
                state = await redis.hget(keys.job(job_id), "state")
                if state not in (b"succeeded", b"failed", b"cancelled"):
                    return False
                if delivered:
                    status = await redis.hget(keys.webhook_delivery(f"wh_{job_id}"), "status")
                    if status not in (b"delivered", b"dead", b"disabled"):
                        return False
            return True

        self.traffic.run_until(done)


def console_settings(redis_url: str, emulator: EmulatorControl) -> Settings:
    provider = ProviderSettings(
        kind="openai",
        base_url=f"{emulator.url}/v1",
        api_key="sk-test",
        http=HttpSettings(max_retries=2, backoff_base=0.01, backoff_max=0.05, read_timeout=10),
    )
    return make_settings(
        redis_url,
        providers={"openai": provider},
        lane_defaults=LaneDefaults(max_wait=0.1),
        scheduler=SchedulerSettings(
            tick_interval_s=0.1, poll_initial_s=0.1, poll_max_s=0.2, poll_backoff=1, lease_ttl_s=10
        ),
        webhooks=WebhookSettings(retry_schedule_s=[], timeout_s=5, lease_s=10),  # one failure: dead
        webhook_allowlist=["127.0.0.0/8"],
        console=ConsoleSettings(refresh_s=0.3),
        log_access=False,
    )


@pytest.fixture
def console(redis_url: str, emulator: EmulatorControl) -> Iterator[Console]:
    """A real API on a free port (its own thread), the pipeline on another, over a flushed Redis."""
    sync_redis.Redis.from_url(redis_url).flushdb()
    settings = console_settings(redis_url, emulator)
    with (
        serve(create_app(settings)) as url,
        running_traffic(settings, emulator) as traffic,
        httpx.Client(base_url=url, timeout=30) as http,
    ):
        yield Console(url, settings, traffic, http)


def sign_in(page: Page, console: Console, key: str, shots: Path | None = None) -> None:
    page.goto(f"{console.url}/ui/")
    expect(page).to_have_url(f"{console.url}/ui/login")
    page.get_by_label("API key").fill(key)
    if shots is not None:
        page.screenshot(path=shots / "login.png")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text("Signed in as")).to_be_visible()


def lane_cell(page: Page, field: str):
    return page.locator(
        f'#lanes tr[data-lane="openai:gpt-4o-mini:/v1/chat/completions"] [data-field="{field}"]'
    )


def test_admin_signs_in_and_sees_lanes_update_as_jobs_flow(
    browser_page: Page, console: Console, artifacts: Path
):
    page = browser_page
    sign_in(page, console, "admin-key", artifacts)
    expect(page).to_have_url(f"{console.url}/ui/lanes")
    expect(page.locator("#lanes tbody")).to_contain_text("No lanes yet")

    job_ids = console.enqueue(ACME, "nightly-summary", count=3)
    # No reload: the page's script polls /ui/data/lanes and redraws the row.
    expect(lane_cell(page, "queued")).to_have_text("3")
    page.screenshot(path=artifacts / "lanes-queued.png", full_page=True)

    console.finish(job_ids)
    console.traffic.run_until(lane_judged, within_s=5)
    expect(lane_cell(page, "queued")).to_have_text("0")
    expect(lane_cell(page, "on_time")).to_have_text("100.0%")
    expect(lane_cell(page, "state")).to_have_text("healthy")
    page.screenshot(path=artifacts / "lanes.png", full_page=True)

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{console.url}/ui/login")
    page.goto(f"{console.url}/ui/lanes")
    expect(page).to_have_url(f"{console.url}/ui/login")  # the session is gone server side


async def lane_judged(redis: Redis) -> bool:
    """The tick's lane snapshot counts the finished jobs (the on-time ratio is then known)."""
    import orjson

    raw = await redis.get(keys.lane_slo("openai:gpt-4o-mini:/v1/chat/completions"))
    return bool(raw) and orjson.loads(raw).get("finished_jobs", 0) >= 3
