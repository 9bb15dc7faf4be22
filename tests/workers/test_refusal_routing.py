"""A batch refused whole routes its jobs by the one retry rule: a spent batch_only tenant never
reaches paid sync (emulator over real HTTP, real Redis, burst workers)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from arq.connections import ArqRedis

from config.settings import LaneDefaults, SchedulerSettings, Settings, SloSettings, TenantSettings
from scheduler.costs import budgets
from scheduler.ledger import keys
from scheduler.ledger.ledger import Ledger
from scheduler.planning.batches import Batches
from scheduler.service import Scheduler, build_scheduler
from tests.conftest import make_settings
from tests.scheduler.planning_support import new_job
from tests.workers.conftest import openai_settings
from tests.workers.test_batch_tasks import PLANNING_STEPS, worker_ctx
from workers.tasks.batches import poll_batch
from workers.worker import run_burst

MODEL = "gpt-4o-mini"
MAX_ATTEMPTS = 3
# A lane that knows nothing of its own yet plans another batch with the prior turnaround plus the
# sync margin (twice the default sync latency): 60 + 2 x 30 s. A deadline 90 s out leaves too little.
NEAR_DEADLINE_MS = 90_000
FAR_DEADLINE_MS = 86_400_000


@pytest.fixture
def settings(redis_url: str, emulator) -> Settings:
    base = make_settings(redis_url)
    tenants = {
        **base.tenants,
        "frugal": TenantSettings(api_key="frugal-key", monthly_budget_usd=1, budget_policy="batch_only"),
    }
    return make_settings(
        redis_url,
        tenants=tenants,
        providers={"openai": openai_settings(emulator.url)},
        scheduler=SchedulerSettings(poll_initial_s=0.05, poll_max_s=0.2, max_attempts=MAX_ATTEMPTS),
        slo=SloSettings(prior_turnaround_s=60, default_sync_latency_s=30, sync_retry_allowance=2),
        lane_defaults=LaneDefaults(max_wait=60),
    )


@pytest.fixture
async def scheduler(settings: Settings, redis, arq_pool: ArqRedis) -> AsyncIterator[Scheduler]:
    async with build_scheduler(settings, redis, arq_pool) as s:
        s.steps = [(n, step) for n, step in s.steps if n in PLANNING_STEPS]
        yield s


async def submit_then_lose(
    redis, scheduler: Scheduler, settings: Settings, emulator, *, attempts: int, deadline_in_ms: int
) -> dict[str, list[str]]:
    """Two tenants' jobs in one submitted batch, which the provider then loses (404 on every poll)."""
    now_ms = int(time.time() * 1000)
    jobs = {
        tenant: [
            new_job("openai", MODEL, now_ms + deadline_in_ms, created_ms=now_ms - 61_000, tenant=tenant)
            for _ in range(3)
        ]
        for tenant in ("frugal", "acme")
    }
    await Ledger(redis).enqueue_many([j for group in jobs.values() for j in group])
    ids = {tenant: [j.id for j in group] for tenant, group in jobs.items()}
    for job_id in ids["frugal"] + ids["acme"]:
        await redis.hset(keys.job(job_id), "attempts", attempts)
    report = await scheduler.tick(time.time())
    assert len(report.planned) == 1
    [batch_id] = report.planned
    emulator.configure(stall=["*"])
    await run_burst(settings)
    assert (await Batches(redis).get(batch_id)).state == "submitted"  # type: ignore[union-attr]
    # frugal's batch_only envelope is spent; acme has no budget.
    await redis.set(keys.budget_spend("frugal", budgets.month_of(now_ms)), "5")
    emulator.reset()
    async with worker_ctx(settings, redis) as ctx:
        assert await poll_batch(ctx, batch_id) == "abandoned"
    assert (await Batches(redis).get(batch_id)).state == "failed"  # type: ignore[union-attr]
    return ids


async def test_a_spent_batch_only_tenants_jobs_fail_rather_than_go_to_paid_sync(
    redis, scheduler, settings, emulator
) -> None:
    """Attempts used up: the tenant that may pay goes on to sync, the one that may not fails clearly."""
    ids = await submit_then_lose(
        redis, scheduler, settings, emulator, attempts=MAX_ATTEMPTS - 1, deadline_in_ms=FAR_DEADLINE_MS
    )
    ledger = Ledger(redis)
    frugal = await ledger.get_many(ids["frugal"])
    assert {j.state for j in frugal if j} == {"failed"}
    for job in frugal:
        assert job is not None
        assert job.error is not None
        assert job.error["code"] == "sync_blocked"
        assert job.error["cause"]["code"] == "batch_lost"
    acme = await ledger.get_many(ids["acme"])
    assert {j.state for j in acme if j} == {"sync"}
    queued_for_sync = {m.decode() for m in await redis.zrange(keys.SYNC_QUEUE, 0, -1)}
    assert queued_for_sync == set(ids["acme"])


async def test_a_spent_batch_only_tenants_jobs_with_attempts_left_go_back_though_the_deadline_is_near(
    redis, scheduler, settings, emulator
) -> None:
    """The deadline leaves no room for another batch: sync for acme, the lane (late) for frugal."""
    ids = await submit_then_lose(
        redis, scheduler, settings, emulator, attempts=0, deadline_in_ms=NEAR_DEADLINE_MS
    )
    ledger = Ledger(redis)
    frugal = await ledger.get_many(ids["frugal"])
    assert {(j.state, j.attempts) for j in frugal if j} == {("queued", 1)}
    acme = await ledger.get_many(ids["acme"])
    assert {j.state for j in acme if j} == {"sync"}
    assert {m.decode() for m in await redis.zrange(keys.SYNC_QUEUE, 0, -1)} == set(ids["acme"])


async def test_jobs_with_attempts_and_time_left_go_back_to_their_lane_whoever_pays(
    redis, scheduler, settings, emulator
) -> None:
    ids = await submit_then_lose(
        redis, scheduler, settings, emulator, attempts=0, deadline_in_ms=FAR_DEADLINE_MS
    )
    jobs = await Ledger(redis).get_many(ids["frugal"] + ids["acme"])
    assert {(j.state, j.attempts) for j in jobs if j} == {("queued", 1)}
    assert await redis.zcard(keys.SYNC_QUEUE) == 0
