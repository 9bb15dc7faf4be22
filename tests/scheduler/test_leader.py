"""The leader lease: one scheduler acts, a standby takes over within the lease, a deposed one is fenced."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from arq.connections import ArqRedis

from config.settings import SchedulerSettings, SloSettings
from scheduler import keys
from scheduler.batches import Batches, Fenced
from scheduler.lanes import effective
from scheduler.leader import Leader
from scheduler.ledger import Ledger
from scheduler.service import Scheduler
from scheduler.tasks import create_pool
from tests.conftest import make_settings
from tests.scheduler.planning_support import enqueue_lane
from tests.scheduler.test_service import planning_only

LEASE_S = 0.3


@pytest.fixture
async def arq_pool(redis_url: str, redis) -> AsyncIterator[ArqRedis]:
    pool = await create_pool(redis_url)
    try:
        yield pool
    finally:
        await pool.aclose()


@pytest.fixture
def lease_settings(redis_url: str):
    return make_settings(
        redis_url,
        scheduler=SchedulerSettings(lease_ttl_s=LEASE_S),
        slo=SloSettings(prior_turnaround_s=60),
    )


async def queue_jobs(redis, count: int = 5) -> list[str]:
    now_ms = int(time.time() * 1000)
    return await enqueue_lane(
        Ledger(redis),
        "openai",
        "m",
        count,
        now_ms=now_ms,
        age_ms=120_000,
        deadlines=lambda i: now_ms + 86_400_000,
    )


async def test_acquire_renew_and_lose(redis) -> None:
    a = Leader(redis, holder="a", ttl_s=5)
    b = Leader(redis, holder="b", ttl_s=5)
    assert await a.ensure() == 1
    assert await a.ensure() == 1  # renewed, same token
    assert await b.ensure() is None
    await a.release()
    assert await b.ensure() == 2  # a new holder takes a new token
    assert await a.ensure() is None


async def test_only_one_of_two_schedulers_acts_per_tick(redis, lease_settings, arq_pool) -> None:
    await queue_jobs(redis)
    async with (
        Scheduler(lease_settings, redis, arq_pool, holder="a") as a,
        Scheduler(lease_settings, redis, arq_pool, holder="b") as b,
    ):
        planning_only(a)
        planning_only(b)
        for _ in range(5):
            now = time.time()
            reports = [await a.tick(now), await b.tick(now)]
            assert sum(r.leader for r in reports) == 1
        assert a.leader.is_leader
        assert not b.leader.is_leader


async def test_standby_takes_over_within_the_lease_when_the_leader_dies(
    redis, lease_settings, arq_pool
) -> None:
    async with (
        Scheduler(lease_settings, redis, arq_pool, holder="a") as a,
        Scheduler(lease_settings, redis, arq_pool, holder="b") as b,
    ):
        planning_only(a)
        planning_only(b)
        assert (await a.tick(time.time())).leader
        await queue_jobs(redis)
        # "a" dies: it stops ticking (and never releases). "b" keeps ticking as a standby does.
        died = time.monotonic()
        report = await b.tick(time.time())
        while not report.leader and time.monotonic() - died < 5 * LEASE_S:
            await asyncio.sleep(LEASE_S / 10)
            report = await b.tick(time.time())
        assert report.leader, "the standby never took over"
        assert report.reserved == 5  # and it acted in that tick
        assert report.token is not None
        assert report.token > 1
        a.leader.token = None  # the dead one must not release b's lease on exit


async def test_a_deposed_leaders_late_tick_changes_nothing(redis, lease_settings, arq_pool) -> None:
    """The old leader was paused past its lease; its late tick is refused by the fencing token."""
    async with (
        Scheduler(lease_settings, redis, arq_pool, holder="a") as a,
        Scheduler(lease_settings, redis, arq_pool, holder="b") as b,
    ):
        planning_only(a)
        planning_only(b)
        old = await a.tick(time.time())
        assert old.leader
        assert old.token is not None
        await redis.delete(keys.LEADER_LEASE)  # the lease ran out while "a" was paused
        assert (await b.tick(time.time())).leader
        job_ids = await queue_jobs(redis)
        late = await a.act(time.time(), old.token)  # "a" wakes up mid-tick, believing it leads
        assert late.fenced
        assert late.planned == []
        assert late.reserved == 0
        assert not a.leader.is_leader
        assert await redis.zcard(keys.lane_queue("openai:m:/v1/chat/completions")) == len(job_ids)
        records = await Ledger(redis).get_many(job_ids)
        assert {r.state for r in records if r} == {"queued"}
        assert not (await a.tick(time.time())).leader  # and its next tick finds the lease taken


async def test_reserve_checks_the_fencing_token(redis, lease_settings) -> None:
    await queue_jobs(redis, 2)
    lane = effective(lease_settings, "openai", "m", "/v1/chat/completions")
    await redis.set(keys.LEADER_FENCE, 7)
    batches = Batches(redis)
    with pytest.raises(Fenced):
        await batches.reserve(lane, "bat_x", token=6, now_ms=1, chunk=10)
    assert await batches.get("bat_x") is None
    assert await batches.reserve(lane, "bat_x", token=7, now_ms=1, chunk=10) == 2
