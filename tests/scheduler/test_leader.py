"""The leader lease: one scheduler acts, a standby takes over within the lease, a deposed one is fenced."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from config.settings import AlertSettings, PagerDutySettings, SchedulerSettings, SloSettings
from scheduler.errors import Fenced
from scheduler.ledger import keys
from scheduler.ledger.leader import Leader
from scheduler.ledger.ledger import Ledger
from scheduler.planning.batches import Batches
from scheduler.planning.lanes import effective
from scheduler.service import build_scheduler
from scheduler.tick import Tick
from tests.conftest import make_settings
from tests.scheduler.planning_support import enqueue_lane
from tests.scheduler.slo_support import LANE, enqueue
from tests.scheduler.test_service import planning_only

# A lease that lapses soon, for the test that waits for it to (it runs on Redis's own clock).
LEASE_S = 0.3
# A lease that outlasts any test, however slow the machine: a test that ends one does it by hand.
HELD_LEASE_S = 600
NOW_S = 1_800_000_000.0


def leased(redis_url: str, lease_s: float):
    return make_settings(
        redis_url,
        scheduler=SchedulerSettings(lease_ttl_s=lease_s),
        slo=SloSettings(prior_turnaround_s=60),
    )


@pytest.fixture
def lease_settings(redis_url: str):
    """A lease no machine's slowness lets lapse between two ticks."""
    return leased(redis_url, HELD_LEASE_S)


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
        build_scheduler(lease_settings, redis, arq_pool, holder="a") as a,
        build_scheduler(lease_settings, redis, arq_pool, holder="b") as b,
    ):
        planning_only(a)
        planning_only(b)
        for _ in range(5):
            now = time.time()
            reports = [await a.tick(now), await b.tick(now)]
            assert sum(r.leader for r in reports) == 1
        assert a.leader.is_leader
        assert not b.leader.is_leader


async def test_standby_takes_over_within_the_lease_when_the_leader_dies(redis, redis_url, arq_pool) -> None:
    settings = leased(redis_url, LEASE_S)
    async with (
        build_scheduler(settings, redis, arq_pool, holder="a") as a,
        build_scheduler(settings, redis, arq_pool, holder="b") as b,
    ):
        planning_only(a)
        planning_only(b)
        assert (await a.tick(time.time())).leader
        await queue_jobs(redis)
        # "a" dies: it stops ticking (and never releases). "b" keeps ticking as a standby does.
        # The lease lapses by Redis key expiry (real time); a standby that never takes over fails
        # the test by its timeout.
        while not (report := await b.tick(time.time())).leader:  # noqa: ASYNC110 - Redis expires the lease
            await asyncio.sleep(LEASE_S / 10)
        assert report.reserved == 5  # and it acted in that tick
        assert report.token is not None
        assert report.token > 1
        a.leader.token = None  # the dead one must not release b's lease on exit


async def test_a_deposed_leaders_late_tick_changes_nothing(redis, lease_settings, arq_pool) -> None:
    """The old leader was paused past its lease; its late tick is refused by the fencing token."""
    async with (
        build_scheduler(lease_settings, redis, arq_pool, holder="a") as a,
        build_scheduler(lease_settings, redis, arq_pool, holder="b") as b,
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


async def test_a_lease_handover_mid_tick_sends_one_page_per_incident(redis, redis_url, arq_pool) -> None:
    """a's tick has begun (it holds a token) when its lease passes to b, which pages; a's SLO step then
    finds its token stale: no second page, and b's lane snapshot stands."""
    settings = make_settings(
        redis_url,
        scheduler=SchedulerSettings(lease_ttl_s=30),
        slo=SloSettings(prior_turnaround_s=10, default_sync_latency_s=1),
        alerts=AlertSettings(pagerduty=PagerDutySettings(routing_key="R0123456789abcdef0123456789abcdef")),
    )
    now = 1_800_000_000.0
    # Due within the sync margin: the job flips at once and the lane breaches.
    await enqueue(Ledger(redis), int(now * 1000), [1])
    async with (
        build_scheduler(settings, redis, arq_pool, holder="a") as a,
        build_scheduler(settings, redis, arq_pool, holder="b") as b,
    ):
        handed_over: list[bool] = []

        async def handover(tick: Tick) -> None:
            await redis.delete(keys.LEADER_LEASE)  # a stalls past its lease here
            report = (await b.tick(now)).steps["slo"].lanes[LANE]
            handed_over.append(report.alerts == ["trigger:health"])

        a.steps.insert(0, ("handover", handover))
        late = await a.tick(now + 1)
        assert handed_over == [True]
        assert late.fenced
        assert not a.leader.is_leader
        for i in range(2, 5):  # b goes on leading; the incident stays open without a new page
            assert (await b.tick(now + i)).leader
            assert not (await a.tick(now + i)).leader
    pages = [n for n in await redis.zrange(keys.ALERTS_DUE, 0, -1) if n.endswith(b".pagerduty")]
    assert len(pages) == 1
    snapshot = orjson.loads(await redis.get(keys.lane_slo(LANE)))
    assert snapshot["updated_ms"] == int((now + 4) * 1000)  # b's last tick, never a's late one


class StepClock:
    """A monotonic clock the test moves: a step 'takes' as long as the test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_long_tick_renews_the_lease_between_steps(redis, redis_url, arq_pool) -> None:
    settings = make_settings(redis_url, scheduler=SchedulerSettings(lease_ttl_s=6))
    scheduler = build_scheduler(settings, redis, arq_pool, holder="a")
    clock = StepClock()
    scheduler.monotonic = clock
    seen: list[int] = []

    async def slow(tick) -> None:  # takes 4 of the lease's 6 s; the lease has 1 s left afterwards
        clock.now += 4
        await redis.pexpire(keys.LEADER_LEASE, 1000)

    async def after(tick) -> None:
        seen.append(await redis.pttl(keys.LEADER_LEASE))

    scheduler.steps = [("slow", slow), ("after", after)]
    report = await scheduler.tick(NOW_S)
    assert report.leader
    assert not report.fenced
    assert seen
    assert seen[0] > 5000


async def test_a_tick_that_outlived_its_lease_stops_fenced(redis, redis_url, arq_pool) -> None:
    settings = make_settings(redis_url, scheduler=SchedulerSettings(lease_ttl_s=6))
    scheduler = build_scheduler(settings, redis, arq_pool, holder="a")
    clock = StepClock()
    scheduler.monotonic = clock
    ran: list[str] = []

    async def stalled(tick) -> None:  # paused past the lease; a standby took over meanwhile
        clock.now += 7
        await redis.delete(keys.LEADER_LEASE)
        assert await Leader(redis, holder="b", ttl_s=6).ensure() is not None
        ran.append("stalled")

    async def late(tick) -> None:
        ran.append("late")

    scheduler.steps = [("stalled", stalled), ("late", late)]
    report = await scheduler.tick(NOW_S)
    assert report.fenced
    assert not report.leader
    assert ran == ["stalled"]


async def test_the_heartbeat_keeps_the_lease_through_a_step_longer_than_it(
    redis, redis_url, arq_pool
) -> None:
    """A step that lasts three renewals (a whole TTL) without yielding a step boundary keeps the lease."""
    settings = make_settings(redis_url, scheduler=SchedulerSettings(lease_ttl_s=3))
    scheduler = build_scheduler(settings, redis, arq_pool, holder="a")
    renewals = 0
    ensure = scheduler.leader.ensure

    async def counted() -> int | None:
        nonlocal renewals
        renewals += 1
        return await ensure()

    scheduler.leader.ensure = counted  # type: ignore[method-assign]

    async def long_step(tick) -> None:
        start = renewals
        for _ in range(2_000):  # at most 100 s; the heartbeat renews every second
            if renewals - start >= 3:
                break
            await asyncio.sleep(0.05)
        assert renewals - start >= 3

    scheduler.steps = [("long", long_step)]
    report = await scheduler.tick(NOW_S)
    assert report.leader
    assert not report.fenced
    assert not report.errors
    assert await redis.get(keys.LEADER_LEASE) == b"a"
