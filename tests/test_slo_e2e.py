"""The SLO tracker end to end: real Redis, the emulator over HTTP, the scheduler's tick, an arq worker.

Each test drives ``Scheduler.tick(time.time())`` in a loop with one arq worker running alongside,
until the outcome is reached, then asserts outcomes only (on time = completed_ms <= deadline_ms),
never timing. PagerDuty is a real local HTTP receiver set as ``settings.alerts.pagerduty.url``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator

import orjson
import pytest
from arq.worker import Worker

from config.settings import (
    AlertSettings,
    BurnRule,
    HttpSettings,
    LaneDefaults,
    PagerDutySettings,
    ProviderSettings,
    SchedulerSettings,
    SloSettings,
)
from emulator import server
from scheduler import keys
from scheduler.alerting import dedup_key
from scheduler.health import sample
from scheduler.jobs import JobRecord
from scheduler.ledger import Ledger, day_of
from scheduler.service import Scheduler, build_scheduler
from scheduler.tasks import create_pool
from tests.conftest import make_settings
from tests.scheduler.slo_support import LANE, new_job
from tests.workers.receiver import Receiver, running_receiver
from workers.worker import close_worker, run_burst, worker_settings

ROUTING_KEY = "R0123456789abcdef0123456789abcdef"
FAST_HTTP = HttpSettings(max_retries=2, backoff_base=0.01, backoff_max=0.05, read_timeout=10)
DRIVE_TIMEOUT_S = 18


@pytest.fixture
def redis_url(pipeline_server, redis_servers) -> str:
    """End to end on each kind of server: the embedded Valkey and the machine's redis-server."""
    return redis_servers.url(pipeline_server)


@pytest.fixture(scope="module")
def emulator_url() -> Iterator[str]:
    with server.running_emulator({"turnaround_s": 0.3, "retry_after_s": 0.2, "cancel_s": 0.1}) as url:
        yield url


@pytest.fixture
def emulator(emulator_url: str) -> server.EmulatorControl:
    control = server.EmulatorControl(emulator_url)
    control.reset()
    return control


@pytest.fixture
def pagerduty() -> Iterator[Receiver]:
    with running_receiver(lambda n: (202, {}, 0.0)) as receiver:
        yield receiver


def e2e_settings(redis_url, emulator, pagerduty, *, flex=False, http=FAST_HTTP, **slo):
    slo_base = {
        "prior_turnaround_s": 1.0,
        "min_samples": 3,
        "default_sync_latency_s": 1.0,  # a 2 s sync margin: room for a loaded 2-core machine
        "sync_retry_allowance": 2,
        "bucket_s": 1,
        "recover_ticks": 2,
        "sync_share_alert": 1.0,
        "burn_rules": [BurnRule(severity="page", factor=2, long_window_s=10, short_window_s=2)],
    }
    provider = ProviderSettings(
        kind="openai",
        base_url=f"{emulator.url}/v1",
        api_key="sk-test",
        http=http,
        flex=flex,
        flex_latency_s=0.5,
    )
    return make_settings(
        redis_url,
        providers={"openai": provider},
        lane_defaults=LaneDefaults(max_wait=0.1),
        scheduler=SchedulerSettings(
            tick_interval_s=0.1, poll_initial_s=0.1, poll_max_s=0.2, poll_backoff=1, lease_ttl_s=10
        ),
        slo=SloSettings(**(slo_base | slo)),
        alerts=AlertSettings(
            pagerduty=PagerDutySettings(routing_key=ROUTING_KEY, url=pagerduty.url),
            renotify_s=3600,
            resolve_after_s=0.3,
        ),
    )


@pytest.fixture
async def harness(redis, redis_url):
    pool = await create_pool(redis_url)
    created: list[Scheduler] = []

    def make(settings) -> Scheduler:
        scheduler = build_scheduler(settings, redis, pool, holder="e2e")
        created.append(scheduler)
        return scheduler

    yield make
    for scheduler in created:
        await scheduler.close()
    await pool.aclose()


async def drive(scheduler: Scheduler, until: Callable[[], Awaitable[bool]]) -> None:
    """Tick on the real clock, with one worker running alongside, until ``until()`` holds.

    One long-lived worker rather than a burst worker per tick: a burst worker's start (clients,
    connections) costs tenths of a second on a loaded machine, which ate the deadlines' sync margin
    of these second-scale scenarios before any task ran.
    """
    worker = Worker(**worker_settings(scheduler.settings), poll_delay=0.02, handle_signals=False)
    running = asyncio.create_task(worker.main())
    try:
        give_up = time.monotonic() + DRIVE_TIMEOUT_S
        while not await until():
            assert time.monotonic() < give_up, "the outcome was not reached"
            assert not running.done(), running
            report = await scheduler.tick(time.time())
            assert not report.errors, report.errors
            await asyncio.sleep(0.05)
    finally:  # stop picking, let the tasks in flight end (as a SIGTERM'd worker does), then close
        worker.allow_pick_jobs = False
        in_flight = [t for t in worker.tasks.values() if not t.done()]
        if in_flight:
            await asyncio.wait(in_flight, timeout=DRIVE_TIMEOUT_S)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await close_worker(worker)


async def enqueue(ledger: Ledger, deadlines_s: list[float], state: str = "queued") -> list[str]:
    now = int(time.time() * 1000)
    jobs = [new_job(now, d) for d in deadlines_s]
    for job in jobs:
        job.state = state  # type: ignore[assignment]
    return [o.job_id for o in await ledger.enqueue_many(jobs)]


async def records(ledger: Ledger, job_ids: list[str]) -> list[JobRecord]:
    found = await ledger.get_many(job_ids)
    assert all(r is not None for r in found)
    return [r for r in found if r is not None]


def all_terminal(ledger: Ledger, job_ids: list[str]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return all(r.terminal for r in await records(ledger, job_ids))

    return check


def pd_events(receiver: Receiver) -> list[dict]:
    return [orjson.loads(r.body) for r in receiver.requests]


async def test_healthy_lane_every_job_by_batch_on_time_no_alert(
    redis, redis_url, emulator, pagerduty, harness
):
    settings = e2e_settings(redis_url, emulator, pagerduty)
    scheduler = harness(settings)
    ledger = Ledger(redis, slo_bucket_s=1)
    job_ids = await enqueue(ledger, [15] * 5)
    await drive(scheduler, all_terminal(ledger, job_ids))
    for job in await records(ledger, job_ids):
        assert job.state == "succeeded"
        assert job.route == "batch"
        assert job.completed_ms is not None
        assert job.completed_ms <= job.deadline_ms
        assert "flipped_ms" not in job.raw
    for _ in range(3):  # a few more ticks: still nothing to say
        await scheduler.tick(time.time())
        await run_burst(settings)
    assert pagerduty.requests == []
    assert await redis.zcard(keys.ALERTS_DUE) == 0


async def test_stalled_lane_flips_cancels_pages_once_and_resolves(
    redis, redis_url, emulator, pagerduty, harness
):
    settings = e2e_settings(redis_url, emulator, pagerduty)
    scheduler = harness(settings)
    ledger = Ledger(redis, slo_bucket_s=1)
    emulator.configure(stall=["gpt-4o-mini"])
    stalled = await enqueue(ledger, [6] * 4)
    await drive(scheduler, all_terminal(ledger, stalled))
    for job in await records(ledger, stalled):
        assert job.state == "succeeded"
        assert job.route == "sync"
        assert job.completed_ms is not None
        assert job.completed_ms <= job.deadline_ms
        assert "flipped_ms" in job.raw  # flipped by the SLO tracker, not sent to sync at enqueue
    cancels = [r for r in emulator.requests() if r["method"] == "POST" and r["path"].endswith("/cancel")]
    assert len(cancels) == 1  # the batch whose jobs all flipped

    async def paged() -> bool:
        return len(pagerduty.requests) >= 1

    await drive(scheduler, paged)
    # The stall is lifted; new work goes through by batch and the lane recovers.
    emulator.configure(stall=[])
    recovered = await enqueue(ledger, [15] * 3)
    await drive(scheduler, all_terminal(ledger, recovered))
    assert {j.route for j in await records(ledger, recovered)} == {"batch"}

    async def resolved() -> bool:
        return any(e["event_action"] == "resolve" for e in pd_events(pagerduty))

    await drive(scheduler, resolved)
    events = pd_events(pagerduty)
    key = dedup_key(LANE, "health")
    assert [(e["event_action"], e["dedup_key"]) for e in events] == [("trigger", key), ("resolve", key)]
    assert events[0]["routing_key"] == ROUTING_KEY
    assert events[0]["payload"]["custom_details"]["state"] in ("lagging", "breaching")
    assert events[0]["payload"]["component"] == LANE


async def test_flipped_jobs_go_to_flex_first(redis, redis_url, emulator, pagerduty, harness):
    """A 1.5 s deadline cannot wait for a batch (prior 1 s + margin): it flips at the first tick, and
    flex has room. A sync margin of 2 s makes the first tick its last safe moment, whatever the load."""
    settings = e2e_settings(redis_url, emulator, pagerduty, flex=True, default_sync_latency_s=1.0)
    scheduler = harness(settings)
    ledger = Ledger(redis, slo_bucket_s=1)
    job_ids = await enqueue(ledger, [1.5] * 3)
    await drive(scheduler, all_terminal(ledger, job_ids))
    for job in await records(ledger, job_ids):
        assert job.state == "succeeded"
        assert job.route == "flex"
        assert job.completed_ms is not None
        assert job.completed_ms <= job.deadline_ms
    tiers = [r.get("service_tier") for r in emulator.requests() if r["path"] == "/v1/chat/completions"]
    assert tiers == ["flex"] * 3


async def test_flex_429_falls_through_to_standard(redis, redis_url, emulator, pagerduty, harness):
    settings = e2e_settings(redis_url, emulator, pagerduty, flex=True, default_sync_latency_s=1.0)
    scheduler = harness(settings)
    ledger = Ledger(redis, slo_bucket_s=1)
    emulator.configure(flex_unavailable=1.0)
    job_ids = await enqueue(ledger, [1.5] * 2)
    await drive(scheduler, all_terminal(ledger, job_ids))
    for job in await records(ledger, job_ids):
        assert job.state == "succeeded"
        assert job.route == "sync"
        assert job.completed_ms is not None
        assert job.completed_ms <= job.deadline_ms
    calls = [
        (r.get("service_tier"), r["status"])
        for r in emulator.requests()
        if r["path"] == "/v1/chat/completions"
    ]
    assert sorted(calls, key=str) == sorted([("flex", 429), ("auto", 200)] * 2, key=str)


async def test_late_batch_result_for_a_flipped_job_is_duplicate_spend(
    redis, redis_url, emulator, pagerduty, harness
):
    """History says batches take 1 s, rarely 3 s. The 2.5 s job rides the batch until the batch
    outlasts the usual 1 s; then only a 3 s turnaround is left, so it flips. The 60 s job stays."""
    settings = e2e_settings(redis_url, emulator, pagerduty, turnaround_quantile=0.5)
    scheduler = harness(settings)
    ledger = Ledger(redis, slo_bucket_s=1)
    now = int(time.time() * 1000)
    for seconds in (1.0, 1.0, 1.0, 1.0, 3.0):
        await redis.lpush(keys.lane_turnarounds(LANE), sample(now, seconds))
    emulator.configure(turnaround_s=1.5)
    urgent, relaxed = await enqueue(ledger, [2.5, 60])
    await drive(scheduler, all_terminal(ledger, [urgent, relaxed]))
    urgent_job, relaxed_job = await records(ledger, [urgent, relaxed])
    assert urgent_job.route == "sync"
    assert relaxed_job.route == "batch"
    for job in (urgent_job, relaxed_job):
        assert job.state == "succeeded"
        assert job.completed_ms is not None
        assert job.completed_ms <= job.deadline_ms
    total = await redis.hgetall(keys.agg_total(day_of(now), "acme"))
    assert float(total[b"duplicate_usd"]) > 0  # the batch's billed answer for the flipped job


async def test_sync_outage_retries_until_deadline_then_fails_and_pages(
    redis, redis_url, emulator, pagerduty, harness
):
    """Backoff of 0.25 s doubling to 1 s: the retries (no attempt cap) go on until a 1.5 s
    deadline, so the last wait is cut to end just past it and that run fails deadline_exceeded."""
    slow_backoff = FAST_HTTP.model_copy(update={"backoff_base": 0.5, "backoff_max": 1.0})
    settings = e2e_settings(redis_url, emulator, pagerduty, http=slow_backoff)
    scheduler = harness(settings)
    ledger = Ledger(redis, slo_bucket_s=1)
    emulator.configure(server_error={"POST /v1/chat/completions": 1.0})
    job_ids = await enqueue(ledger, [1.5] * 2, state="sync")
    await drive(scheduler, all_terminal(ledger, job_ids))
    for job in await records(ledger, job_ids):
        assert job.state == "failed"
        assert job.error is not None
        assert job.error["type"] == "deadline_exceeded"
    attempts = [r for r in emulator.requests() if r["path"] == "/v1/chat/completions"]
    assert len(attempts) >= 2 * 2  # each job was retried before its deadline ran out

    async def paged() -> bool:
        return any(e["event_action"] == "trigger" for e in pd_events(pagerduty))

    await drive(scheduler, paged)
    keys_paged = {e["dedup_key"] for e in pd_events(pagerduty)}
    assert dedup_key(LANE, "health") in keys_paged


async def test_expired_batch_unfinished_jobs_finish_by_their_deadlines(
    redis, redis_url, emulator, pagerduty, harness
):
    settings = e2e_settings(redis_url, emulator, pagerduty)
    scheduler = harness(settings)
    ledger = Ledger(redis, slo_bucket_s=1)
    emulator.configure(expire={"gpt-4o-mini": 0.5})
    job_ids = await enqueue(ledger, [12] * 4)
    await drive(scheduler, all_terminal(ledger, job_ids))
    jobs = await records(ledger, job_ids)
    for job in jobs:
        assert job.state == "succeeded"
        assert job.completed_ms is not None
        assert job.completed_ms <= job.deadline_ms
    assert any(job.attempts > 0 or job.route != "batch" for job in jobs)  # some needed a second way
