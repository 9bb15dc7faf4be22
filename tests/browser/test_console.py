"""The web console in a real browser: headless Chromium against a real API (uvicorn, real Redis),
with jobs flowing through the scheduler, an arq worker and the emulator (traffic.py).

Waiting is on outcomes only: Playwright's ``expect`` retries an assertion until the page shows it
(the lanes table refreshes itself), and the pipeline is stepped on its virtual clock until the
ledger shows the state a test needs. Screenshots of every page go to ``test-artifacts/browser/``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
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
    SloSettings,
    WebhookSettings,
)
from emulator.server import EmulatorControl
from scheduler.ledger import keys
from tests.api.harness import ACME, ADMIN, GLOBEX, serve
from tests.browser import accessibility
from tests.browser.traffic import Traffic, running_traffic
from tests.conftest import make_settings
from tests.workers.receiver import running_receiver

pytestmark = pytest.mark.timeout(300)

AUDIT_MAX_BYTES = 100_000
LANE = "openai:gpt-4o-mini:/v1/chat/completions"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # acme's in tests.conftest.make_settings


@dataclass
class Console:
    url: str
    settings: Settings
    traffic: Traffic
    http: httpx.Client  # to the same API, for enqueueing and for the JSON the pages must agree with

    def enqueue(
        self,
        headers: dict[str, str],
        feature: str,
        count: int = 1,
        callback_url: str | None = None,
        deadline_in: float = 3600,
    ) -> list[str]:
        jobs = []
        for i in range(count):
            item: dict[str, object] = {
                "provider": "openai",
                "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"{feature} {i}"}]},
                "deadline_in": deadline_in,
                "tags": {"feature": feature},
            }
            if callback_url:
                item["callback_url"] = callback_url
            jobs.append(item)
        answer = self.http.post("/v1/jobs/bulk", json={"jobs": jobs}, headers=headers)
        assert answer.status_code == 200, answer.text
        return [entry["job"]["id"] for entry in answer.json()["results"]]

    def finish(self, job_ids: list[str], delivered: bool = False) -> None:
        """Step the pipeline until the jobs ended (and, with ``delivered``, their webhooks were delivered
        or died)."""

        async def done(redis: Redis) -> bool:
            for job_id in job_ids:
                state = await redis.hget(keys.job(job_id), "state")
                if state not in (b"succeeded", b"failed", b"cancelled"):
                    return False
                if delivered and await redis.hget(keys.job(job_id), "callback_url"):
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
        # The SLO e2e tests' model: a lane's turnaround is learnt from a prior of 1 s, so a stalled
        # batch puts a job with seconds to spare at risk, and it is flipped to sync, within seconds.
        slo=SloSettings(
            prior_turnaround_s=1.0,
            min_samples=3,
            default_sync_latency_s=1.0,
            sync_retry_allowance=2,
            bucket_s=1,
            recover_ticks=2,
        ),
        console=ConsoleSettings(refresh_s=0.3, audit_max_bytes=AUDIT_MAX_BYTES),
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


def snap(page: Page, path: Path) -> None:
    """Check the page's accessibility, then write its screenshot as a test artefact."""
    assert accessibility.problems(page) == [], page.url
    page.screenshot(path=path, full_page=True)


def sign_in(page: Page, console: Console, key: str, shots: Path | None = None) -> None:
    page.goto(f"{console.url}/ui/")
    expect(page).to_have_url(f"{console.url}/ui/login")
    page.get_by_label("API key").fill(key)
    if shots is not None:
        snap(page, shots / "login.png")
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
    snap(page, artifacts / "lanes-queued.png")

    console.traffic.run_until(lane_snapshot_shows(batches_in_flight=1), within_s=5)
    expect(lane_cell(page, "queued")).to_have_text("0")
    expect(lane_cell(page, "in_flight")).to_have_text("1")
    snap(page, artifacts / "lanes-in-flight.png")

    console.finish(job_ids)
    console.traffic.run_until(lane_snapshot_shows(finished_jobs=3), within_s=5)
    expect(lane_cell(page, "queued")).to_have_text("0")
    expect(lane_cell(page, "on_time")).to_have_text("100.0%")
    expect(lane_cell(page, "state")).to_have_text("healthy")
    snap(page, artifacts / "lanes.png")

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{console.url}/ui/login")
    page.goto(f"{console.url}/ui/lanes")
    expect(page).to_have_url(f"{console.url}/ui/login")  # the session is gone server side


def lane_snapshot_shows(**figures: int):
    """A check that the tick's last snapshot of the lane holds these figures (what the page shows)."""

    async def check(redis: Redis) -> bool:
        raw = await redis.get(keys.lane_slo(LANE))
        snapshot = orjson.loads(raw) if raw else {}
        return all(snapshot.get(name) == value for name, value in figures.items())

    return check


def test_savings_chart_reflects_costs(browser_page: Page, console: Console, artifacts: Path):
    page = browser_page
    jobs = console.enqueue(ACME, "nightly-summary", count=3) + console.enqueue(GLOBEX, "backfill", count=2)
    console.finish(jobs)
    sign_in(page, console, "admin-key")
    page.goto(f"{console.url}/ui/savings")

    costs = console.http.get("/v1/costs", params={"group_by": "day"}, headers=ADMIN).json()
    assert costs["total"]["jobs"] == 5
    assert costs["total"]["saved_usd"] > 0
    for field, ident in (
        ("actual_usd", "total-actual"),
        ("sync_equivalent_usd", "total-sync"),
        ("saved_usd", "total-saved"),
        ("duplicate_usd", "total-duplicate"),
    ):
        assert float(page.locator(f"#{ident}").get_attribute("data-usd") or "nan") == costs["total"][field]
    assert costs["groups"]  # one row per day with figures (one, unless the test ran across midnight UTC)
    for row in costs["groups"]:
        day = row["key"]
        for field in ("actual_usd", "sync_equivalent_usd", "duplicate_usd"):
            dot = page.locator(f'#savings-chart [data-series="{field}"] circle[data-day="{day}"]')
            assert float(dot.get_attribute("data-usd") or "nan") == row[field]
        # The actual line sits below the sync-equivalent one (SVG y grows downwards).
        actual = page.locator(f'[data-series="actual_usd"] circle[data-day="{day}"]')
        sync = page.locator(f'[data-series="sync_equivalent_usd"] circle[data-day="{day}"]')
        assert float(actual.get_attribute("cy") or 0) > float(sync.get_attribute("cy") or 0)
    tenants = {g["key"]: g for g in console.http.get("/v1/costs", headers=ADMIN).json()["groups"]}
    for name in ("acme", "globex"):
        cells = page.locator(f'#savings-tenants tr[data-key="{name}"] td')
        expect(cells.nth(0)).to_have_text(str(tenants[name]["jobs"]))
    snap(page, artifacts / "savings.png")

    page.get_by_label("Feature").select_option("backfill")
    page.get_by_role("button", name="Show").click()
    expect(page).to_have_url(re.compile(r"feature=backfill"))
    features = console.http.get("/v1/costs", params={"group_by": "feature"}, headers=ADMIN).json()
    (backfill,) = [g for g in features["groups"] if g["key"] == "backfill"]
    assert float(page.locator("#total-actual").get_attribute("data-usd") or "nan") == backfill["actual_usd"]
    expect(page.locator("#total-jobs")).to_have_text("2")


def test_find_a_job_and_read_its_timeline(browser_page: Page, console: Console, artifacts: Path):
    page = browser_page
    with running_receiver(secrets=(WEBHOOK_SECRET,)) as receiver:
        (job_id,) = console.enqueue(ACME, "nightly-summary", callback_url=receiver.url)
        console.finish([job_id], delivered=True)
        assert len(receiver.requests) == 1
    sign_in(page, console, "acme-key")
    page.get_by_role("link", name="Jobs").click()
    expect(page.locator("#jobs")).to_contain_text(job_id)
    snap(page, artifacts / "jobs.png")
    page.get_by_label("Job id").fill(job_id)
    page.get_by_role("button", name="Search").click()
    expect(page).to_have_url(f"{console.url}/ui/jobs/{job_id}")
    expect(page.locator("#job-status")).to_have_text("succeeded")
    events = page.locator("#timeline li")
    names = [events.nth(i).get_attribute("data-event") for i in range(events.count())]
    assert names == ["enqueued", "batched", "ended", "webhook queued", "webhook attempt", "webhook delivered"]
    expect(page.locator('#timeline li[data-event="webhook attempt"]')).to_contain_text("HTTP 200")
    expect(page.locator('#timeline li[data-event="ended"]')).to_contain_text("succeeded by batch, on time")
    snap(page, artifacts / "job.png")


def test_a_flipped_jobs_timeline(
    browser_page: Page, console: Console, artifacts: Path, emulator: EmulatorControl
):
    page = browser_page
    emulator.configure(stall=["gpt-4o-mini"])  # its batches never end: the job must go to sync in time
    (job_id,) = console.enqueue(ACME, "urgent-report", deadline_in=6)
    console.finish([job_id])
    sign_in(page, console, "acme-key")
    page.goto(f"{console.url}/ui/jobs/{job_id}")
    events = page.locator("#timeline li")
    names = [events.nth(i).get_attribute("data-event") for i in range(events.count())]
    assert names == ["enqueued", "batched", "flipped", "ended"]
    expect(page.locator('#timeline li[data-event="ended"]')).to_contain_text("succeeded by sync, on time")
    snap(page, artifacts / "job-flipped.png")


def test_replay_a_dead_lettered_delivery(browser_page: Page, console: Console, artifacts: Path):
    page = browser_page
    # The receiver fails the first delivery (no retries configured: it is dead-lettered at once),
    # then accepts the replay.
    with running_receiver(lambda n: (500 if n == 0 else 200, {}, 0.0), secrets=(WEBHOOK_SECRET,)) as receiver:
        (job_id,) = console.enqueue(ACME, "nightly-summary", callback_url=receiver.url)
        console.finish([job_id], delivered=True)
        delivery = console.http.get("/v1/webhooks/deliveries", params={"status": "dead"}, headers=ACME).json()
        assert [d["job_id"] for d in delivery["data"]] == [job_id]

        sign_in(page, console, "admin-key")
        page.get_by_role("link", name="Dead letters").click()
        row = page.locator(f'#deliveries tr[data-delivery="wh_{job_id}"]')
        expect(row).to_contain_text("HTTP 500")
        snap(page, artifacts / "deliveries.png")
        page.get_by_label(f"Replay wh_{job_id}").check()
        page.get_by_role("button", name="Replay selected").click()
        expect(page.locator("#replay-outcome")).to_have_text("Replayed 1.")
        expect(page.locator("#deliveries tbody")).to_contain_text("No dead-lettered deliveries")

        console.finish([job_id], delivered=True)
        assert len(receiver.requests) == 2
        first, second = receiver.requests
        assert first.headers["webhook-id"] == second.headers["webhook-id"]  # a replay, not a new event
        assert second.verified
    page.goto(f"{console.url}/ui/jobs/{job_id}")
    expect(page.locator("#timeline")).to_contain_text("webhook delivered")
    attempts = page.locator('#timeline li[data-event="webhook attempt"]')
    expect(attempts).to_have_count(2)
    expect(attempts.nth(0)).to_contain_text("HTTP 500")
    expect(attempts.nth(1)).to_contain_text("HTTP 200")


def test_a_tenant_never_sees_another_tenants_data(browser_page: Page, console: Console, artifacts: Path):
    page = browser_page
    with running_receiver(lambda n: (500, {}, 0.0), secrets=(WEBHOOK_SECRET,)) as receiver:
        acme_jobs = console.enqueue(ACME, "acme-secret-feature", count=2, callback_url=receiver.url)
        globex_jobs = console.enqueue(GLOBEX, "globex-feature", count=2)
        console.finish(acme_jobs + globex_jobs, delivered=True)
    sign_in(page, console, "globex-key")
    expect(page).to_have_url(f"{console.url}/ui/savings")
    nav = page.get_by_role("navigation", name="Console")
    expect(nav.get_by_role("link")).to_have_text(["Savings", "Jobs", "Dead letters"])
    expect(page.get_by_text("(read-only)")).to_be_visible()
    expect(page.locator("#total-jobs")).to_have_text("2")
    expect(page.locator("main")).not_to_contain_text("acme")
    snap(page, artifacts / "tenant-savings.png")

    page.goto(f"{console.url}/ui/jobs")
    for job_id in globex_jobs:
        expect(page.locator("#jobs")).to_contain_text(job_id)
    for job_id in acme_jobs:
        expect(page.locator("#jobs")).not_to_contain_text(job_id)
    page.get_by_label("Job id").fill(acme_jobs[0])
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("alert")).to_have_text(f"No job {acme_jobs[0]}.")
    assert page.goto(f"{console.url}/ui/jobs/{acme_jobs[0]}").status == 404  # type: ignore[union-attr]
    assert page.goto(f"{console.url}/ui/savings?tenant=acme").status == 200  # type: ignore[union-attr]
    expect(page.locator("#total-jobs")).to_have_text("2")  # still its own figures
    expect(page.locator("main")).not_to_contain_text("acme")

    page.goto(f"{console.url}/ui/deliveries?tenant=acme")
    expect(page.locator("#deliveries tbody")).to_contain_text("No dead-lettered deliveries")
    expect(page.locator('input[type="checkbox"]')).to_have_count(0)  # read-only: no replay
    for path in ("/ui/lanes", "/ui/data/lanes", "/ui/audits"):
        assert page.goto(f"{console.url}{path}").status == 403  # type: ignore[union-attr]
    replay = page.request.post(f"{console.url}/ui/deliveries/replay", form={"id": f"wh_{acme_jobs[0]}"})
    assert replay.status == 403
    assert console.http.get("/v1/webhooks/deliveries", params={"status": "dead"}, headers=ACME).json()["data"]


# A small stand-in for `batchshift audit --html` output: its script draws the chart, and tries to
# reach the console around it (the sandbox must stop it).
HTML_REPORT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Batch eligibility audit</title></head>
<body><h1>Batch eligibility audit</h1><p id="chart">drawing</p><p id="reach">unknown</p>
<script>
document.getElementById("chart").textContent = "chart drawn";
let reach;
try { reach = "read " + window.parent.document.cookie; } catch (e) { reach = "isolated"; }
document.getElementById("reach").textContent = reach;
</script></body></html>
"""
JSON_REPORT = {
    "features": [
        {
            "feature": "nightly-summary",
            "calls": 1200,
            "input_tokens": 2400000,
            "output_tokens": 360000,
            "list_usd": 12.5,
            "batch_usd": 6.25,
            "flex_usd": 6.25,
            "saved_usd": 6.25,
            "eligible": True,
            "reasons": ["scheduled burst at 02:00 UTC", "no streaming"],
        },
        {
            "feature": "chat",
            "calls": 800,
            "input_tokens": 400000,
            "output_tokens": 200000,
            "list_usd": 4.0,
            "batch_usd": 2.0,
            "flex_usd": 2.0,
            "saved_usd": 0.0,
            "eligible": False,
            "reasons": ["streaming"],
        },
    ],
    "total": {"calls": 2000, "list_usd": 16.5, "batch_usd": 8.25, "saved_usd": 6.25, "eligible_share": 0.6},
}


def test_upload_and_view_audit_reports(browser_page: Page, console: Console, artifacts: Path, tmp_path: Path):
    page = browser_page
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    sign_in(page, console, "admin-key")
    page.get_by_role("link", name="Audit reports").click()
    expect(page.locator("#audits tbody")).to_contain_text("No reports uploaded yet")

    html_file = tmp_path / "audit.html"
    html_file.write_text(HTML_REPORT)
    page.get_by_label("Report file").set_input_files(html_file)
    page.get_by_role("button", name="Upload").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("audit.html")
    frame = page.frame_locator("#audit-frame")
    expect(frame.locator("#chart")).to_have_text("chart drawn")  # the report's own script ran
    expect(frame.locator("#reach")).to_have_text("isolated")  # but could not reach the console
    snap(page, artifacts / "audit-html.png")

    json_file = tmp_path / "audit.json"
    json_file.write_bytes(orjson.dumps(JSON_REPORT))
    page.goto(f"{console.url}/ui/audits")
    page.get_by_label("Report file").set_input_files(json_file)
    page.get_by_role("button", name="Upload").click()
    rows = page.locator("#audit-features tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("nightly-summary")
    expect(rows.nth(0)).to_contain_text("yes")
    expect(rows.nth(1)).to_contain_text("streaming")
    expect(page.locator("#audit-features tfoot")).to_contain_text("eligible share 0.6")
    snap(page, artifacts / "audit-json.png")

    page.goto(f"{console.url}/ui/audits")
    expect(page.locator("#audits tbody tr")).to_have_count(2)
    snap(page, artifacts / "audits.png")
    assert errors == []

    csrf = page.locator('form[action="/ui/audits"] input[name="csrf"]').get_attribute("value")
    upload = {
        "name": "big.html",
        "mimeType": "text/html",
        "buffer": b"<!doctype html>" + b"x" * AUDIT_MAX_BYTES,
    }
    too_big = page.request.post(f"{console.url}/ui/audits", multipart={"csrf": csrf or "", "report": upload})
    assert too_big.status == 413
    assert too_big.json()["error"]["field"] == "report"
    not_a_report = {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}
    refused = page.request.post(
        f"{console.url}/ui/audits", multipart={"csrf": csrf or "", "report": not_a_report}
    )
    assert refused.status == 422
    assert refused.json()["error"]["field"] == "report"
    forged = page.request.post(
        f"{console.url}/ui/audits", multipart={"csrf": "forged", "report": not_a_report}
    )
    assert forged.status == 403
    page.reload()
    expect(page.locator("#audits tbody tr")).to_have_count(2)  # nothing refused was stored


def test_sign_in_refuses_a_wrong_key_and_a_forged_form(browser_page: Page, console: Console):
    page = browser_page
    page.goto(f"{console.url}/ui/login")
    page.get_by_label("API key").fill("not-a-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("That key is not valid.")
    expect(page.get_by_label("API key")).to_have_attribute("aria-invalid", "true")
    assert "not-a-key" not in page.content()  # the key typed is never echoed
    # A sign-in posted from elsewhere carries no form token: refused, no session opened.
    forged = page.request.post(f"{console.url}/ui/login", form={"key": "admin-key"}, max_redirects=0)
    assert forged.status == 403
    assert not [c for c in page.context.cookies() if c["name"] == "batchshift_session"]
    # Keyboard only: the field has focus on arrival; type, Enter.
    page.goto(f"{console.url}/ui/login")
    expect(page.get_by_label("API key")).to_be_focused()
    page.keyboard.type("admin-key")
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{console.url}/ui/lanes")
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "batchshift_session"]
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/ui"
    # The first Tab on a page reaches the skip link, which moves focus to the content.
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
