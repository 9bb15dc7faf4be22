"""The SLO tracker end to end: real Redis, the emulator over HTTP, the scheduler's tick, an arq worker.

Every part reads one virtual clock (:class:`scheduler.clock.ManualClock`): the tick takes its
``now``, the worker's tasks read it as ``ctx["clock"]`` (leases, job ends, SLO samples, sync
latencies), and the emulator's batches progress on it (``EmulatorControl.set_clock``). The test
moves it in fixed steps: at each step the scheduler ticks and the worker runs until it is idle
(nothing queued, nothing in flight) before time moves on. An outcome thus depends only on the
sequence of steps; a slow machine only takes longer. A sync call answers within its step, so on
this clock its latency is 0. Assertions are on outcomes (on time = ``completed_ms <= deadline_ms``).
PagerDuty is a real local HTTP receiver.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

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
    Settings,
    SloSettings,
)
from emulator import server
from scheduler.ledger import keys
from scheduler.ledger.clock import ManualClock
from scheduler.ledger.jobs import JobRecord
from scheduler.ledger.ledger import Ledger, day_of
from scheduler.ledger.samples import sample
from scheduler.ledger.tasks import create_pool
from scheduler.service import Scheduler, build_scheduler
from scheduler.slo.alerting import dedup_key
from tests.conftest import make_settings
from tests.scheduler.slo_support import LANE, new_job
from tests.workers.receiver import Receiver, running_receiver
from workers.worker import close_worker, worker_settings

# Steps are virtual time: a slow machine takes longer over each, never more of them. Many steps
# per run, each waiting for real Redis and HTTP round trips, so the per-test timeout is generous.
pytestmark = pytest.mark.timeout(900)

ROUTING_KEY = "R0123456789abcdef0123456789abcdef"
FAST_HTTP = HttpSettings(max_retries=2, backoff_base=0.01, backoff_max=0.05, read_timeout=10)
STEP_S = 0.1  # virtual seconds per step: the tick interval
SETTLE_POLL_S = 0.005  # real seconds between checks that the worker is idle


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
        "default_sync_latency_s": 1.0,  # a 2 s sync margin until sync calls are observed
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


class Pipeline:
    """The scheduler's tick, one arq worker and the emulator on one virtual clock, moved in steps."""

    def __init__(self, scheduler: Scheduler, worker: Worker, clock: ManualClock, emulator) -> None:
        self.scheduler = scheduler
        self.worker = worker
        self.clock = clock
        self.start_ms = clock.ms
        self.emulator = emulator
        self.running = asyncio.create_task(worker.main())
        self.ledger = Ledger(scheduler.redis, slo_bucket_s=scheduler.settings.slo.bucket_s)

    async def step(self) -> None:
        """Tick at the current time, let the worker finish what that started, then move time on."""
        report = await self.scheduler.tick(self.clock.seconds)
        assert not report.errors, report.errors
        await self.settle()
        self.clock.advance(STEP_S)
        self.emulator.set_clock(self.clock.seconds)

    async def settle(self) -> None:
        """Wait (real time) until the worker is idle: no task running, none queued, none finished
        while we looked. A task deferred by arq's Retry is queued, so it is waited for too."""
        worker = self.worker
        while True:
            assert not self.running.done(), self.running
            counts = (worker.jobs_complete, worker.jobs_failed, worker.jobs_retried)
            if not any(not t.done() for t in worker.tasks.values()):
                queued = await worker.pool.zcard(worker.queue_name)
                idle = not any(not t.done() for t in worker.tasks.values())
                if (
                    queued == 0
                    and idle
                    and counts == (worker.jobs_complete, worker.jobs_failed, worker.jobs_retried)
                ):
                    return
            await asyncio.sleep(SETTLE_POLL_S)

    async def run_until(self, until: Callable[[], Awaitable[bool]], within_s: float) -> None:
        """Step until ``until()`` holds; fail if it has not within ``within_s`` virtual seconds."""
        give_up = self.clock.ms + int(within_s * 1000)
        while not await until():
            assert self.clock.ms < give_up, f"the outcome was not reached within {within_s} virtual seconds"
            await self.step()

    async def run_for(self, seconds: float) -> None:
        for _ in range(round(seconds / STEP_S)):
            await self.step()

    async def enqueue(self, deadlines_s: list[float], state: str = "queued") -> list[str]:
        jobs = [new_job(self.clock.ms, d) for d in deadlines_s]
        for job in jobs:
            job.state = state  # type: ignore[assignment]
        return [o.job_id for o in await self.ledger.enqueue_many(jobs)]

    async def close(self) -> None:
        """Stop picking, let the tasks in flight end (as a SIGTERM'd worker does), then close."""
        self.worker.allow_pick_jobs = False
        in_flight = [t for t in self.worker.tasks.values() if not t.done()]
        if in_flight:
            await asyncio.wait(in_flight)
        self.running.cancel()
        await asyncio.gather(self.running, return_exceptions=True)
        await close_worker(self.worker)
        await self.scheduler.close()


@pytest.fixture
async def harness(redis, redis_url, emulator) -> AsyncIterator[Callable[[Settings], Pipeline]]:
    """Builds the test's pipeline; its clock starts on a whole minute, so SLO buckets and burn
    windows fall on the same steps in every run."""
    pool = await create_pool(redis_url)
    created: list[Pipeline] = []

    def make(settings: Settings) -> Pipeline:
        clock = ManualClock(int(time.time()) // 60 * 60_000)
        emulator.set_clock(clock.seconds)
        scheduler = build_scheduler(settings, redis, pool, holder="e2e")
        # One long-lived worker rather than a burst worker per step (a burst worker's start costs
        # tenths of a second, hundreds of times a test), running one task at a time: tasks started
        # in one step then run in the order they were enqueued, never interleaved by machine speed.
        options = worker_settings(settings, clock=clock) | {"max_jobs": 1}
        worker = Worker(**options, poll_delay=SETTLE_POLL_S, handle_signals=False)
        pipeline = Pipeline(scheduler, worker, clock, emulator)
        created.append(pipeline)
        return pipeline

    yield make
    for pipeline in created:
        await pipeline.close()
    await pool.aclose()


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
    pipeline = harness(e2e_settings(redis_url, emulator, pagerduty))
    job_ids = await pipeline.enqueue([15] * 5)
    await pipeline.run_until(all_terminal(pipeline.ledger, job_ids), within_s=15)
    for job in await records(pipeline.ledger, job_ids):
        assert job.state == "succeeded"
        assert job.route == "batch"
        assert job.completed_ms is not None
        assert job.completed_ms <= job.deadline_ms
        assert "flipped_ms" not in job.raw
        # Stamped by the worker from the injected clock: a step's time, not the machine's.
        assert (job.completed_ms - pipeline.start_ms) % round(STEP_S * 1000) == 0
    await pipeline.run_for(3)  # a few more seconds: still nothing to say
    assert pagerduty.requests == []
    assert await redis.zcard(keys.ALERTS_DUE) == 0


async def test_stalled_lane_flips_cancels_pages_once_and_resolves(
    redis, redis_url, emulator, pagerduty, harness
):
    pipeline = harness(e2e_settings(redis_url, emulator, pagerduty))
    emulator.configure(stall=["gpt-4o-mini"])
    stalled = await pipeline.enqueue([6] * 4)
    await pipeline.run_until(all_terminal(pipeline.ledger, stalled), within_s=6)
    for job in await records(pipeline.ledger, stalled):
        assert job.state == "succeeded"
        assert job.route == "sync"
        assert job.completed_ms is not None
        assert job.completed_ms <= job.deadline_ms
        assert "flipped_ms" in job.raw  # flipped by the SLO tracker, not sent to sync at enqueue
    cancels = [r for r in emulator.requests() if r["method"] == "POST" and r["path"].endswith("/cancel")]
    assert len(cancels) == 1  # the batch whose jobs all flipped

    async def paged() -> bool:
        return len(pagerduty.requests) >= 1

    await pipeline.run_until(paged, within_s=10)
    # The stall is lifted; new work goes through by batch and the lane recovers.
    emulator.configure(stall=[])
    recovered = await pipeline.enqueue([15] * 3)
    await pipeline.run_until(all_terminal(pipeline.ledger, recovered), within_s=15)
    assert {j.route for j in await records(pipeline.ledger, recovered)} == {"batch"}

    async def resolved() -> bool:
        return any(e["event_action"] == "resolve" for e in pd_events(pagerduty))

    await pipeline.run_until(resolved, within_s=30)
    events = pd_events(pagerduty)
    key = dedup_key(LANE, "health")
    assert [(e["event_action"], e["dedup_key"]) for e in events] == [("trigger", key), ("resolve", key)]
    assert events[0]["routing_key"] == ROUTING_KEY
    assert events[0]["payload"]["custom_details"]["state"] in ("lagging", "breaching")
    assert events[0]["payload"]["component"] == LANE


async def test_flipped_jobs_go_to_flex_first(redis, redis_url, emulator, pagerduty, harness):
    """A 1.5 s deadline cannot wait for a batch (prior 1 s + a 2 s sync margin): it flips at the
    first tick, and flex has room."""
    settings = e2e_settings(redis_url, emulator, pagerduty, flex=True, default_sync_latency_s=1.0)
    pipeline = harness(settings)
    job_ids = await pipeline.enqueue([1.5] * 3)
    await pipeline.run_until(all_terminal(pipeline.ledger, job_ids), within_s=1.5)
    for job in await records(pipeline.ledger, job_ids):
        assert job.state == "succeeded"
        assert job.route == "flex"
        assert job.completed_ms is not None
        assert job.completed_ms <= job.deadline_ms
    tiers = [r.get("service_tier") for r in emulator.requests() if r["path"] == "/v1/chat/completions"]
    assert tiers == ["flex"] * 3


async def test_flex_429_falls_through_to_standard(redis, redis_url, emulator, pagerduty, harness):
    settings = e2e_settings(redis_url, emulator, pagerduty, flex=True, default_sync_latency_s=1.0)
    pipeline = harness(settings)
    emulator.configure(flex_unavailable=1.0)
    job_ids = await pipeline.enqueue([1.5] * 2)
    await pipeline.run_until(all_terminal(pipeline.ledger, job_ids), within_s=1.5)
    for job in await records(pipeline.ledger, job_ids):
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
    pipeline = harness(settings)
    now = pipeline.clock.ms
    for seconds in (1.0, 1.0, 1.0, 1.0, 3.0):
        await redis.lpush(keys.lane_turnarounds(LANE), sample(now, seconds))
    emulator.configure(turnaround_s=1.5)
    urgent, relaxed = await pipeline.enqueue([2.5, 60])
    await pipeline.run_until(all_terminal(pipeline.ledger, [urgent, relaxed]), within_s=60)
    urgent_job, relaxed_job = await records(pipeline.ledger, [urgent, relaxed])
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
    pipeline = harness(e2e_settings(redis_url, emulator, pagerduty, http=slow_backoff))
    emulator.configure(server_error={"POST /v1/chat/completions": 1.0})
    job_ids = await pipeline.enqueue([1.5] * 2, state="sync")
    await pipeline.run_until(all_terminal(pipeline.ledger, job_ids), within_s=5)
    for job in await records(pipeline.ledger, job_ids):
        assert job.state == "failed"
        assert job.error is not None
        assert job.error["type"] == "deadline_exceeded"
    attempts = [r for r in emulator.requests() if r["path"] == "/v1/chat/completions"]
    assert len(attempts) >= 2 * 2  # each job was retried before its deadline ran out

    async def paged() -> bool:
        return any(e["event_action"] == "trigger" for e in pd_events(pagerduty))

    await pipeline.run_until(paged, within_s=10)
    keys_paged = {e["dedup_key"] for e in pd_events(pagerduty)}
    assert dedup_key(LANE, "health") in keys_paged


async def test_expired_batch_unfinished_jobs_finish_by_their_deadlines(
    redis, redis_url, emulator, pagerduty, harness
):
    pipeline = harness(e2e_settings(redis_url, emulator, pagerduty))
    emulator.configure(expire={"gpt-4o-mini": 0.5})
    job_ids = await pipeline.enqueue([12] * 4)
    await pipeline.run_until(all_terminal(pipeline.ledger, job_ids), within_s=12)
    jobs = await records(pipeline.ledger, job_ids)
    for job in jobs:
        assert job.state == "succeeded"
        assert job.completed_ms is not None
        assert job.completed_ms <= job.deadline_ms
    assert any(job.attempts > 0 or job.route != "batch" for job in jobs)  # some needed a second way
