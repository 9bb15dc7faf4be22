"""The scheduler's tick: lanes become the fewest batches, earliest deadlines first; polls and reconciliation."""

from __future__ import annotations

import time

from config.settings import LaneDefaults, LaneSettings, SchedulerSettings, SloSettings
from scheduler.ledger import keys, tasks
from scheduler.ledger.ledger import Ledger
from scheduler.ledger.tasks import create_pool
from scheduler.planning.batches import Batches
from scheduler.service import PruneStep, Scheduler, build_scheduler
from scheduler.tick import Tick
from tests.conftest import make_settings
from tests.scheduler.planning_support import arq_queue, enqueue_lane, new_job

NOW = time.time()
NOW_MS = int(NOW * 1000)


PLANNING_STEPS = ("plan", "polls", "reconcile")


def planning_only(scheduler: Scheduler) -> Scheduler:
    """The scheduler with only the planning steps (no SLO flips; the plan step still plans with the
    SLO tracker's turnaround model)."""
    scheduler.steps = [(name, step) for name, step in scheduler.steps if name in PLANNING_STEPS]
    return scheduler


def planning_settings(redis_url: str, **overrides: object):
    base: dict[str, object] = {
        "scheduler": SchedulerSettings(reserve_chunk=700),
        "slo": SloSettings(prior_turnaround_s=60),
        "lane_defaults": LaneDefaults(max_wait=60),
        "lanes": {
            "openai:gpt-a:/v1/chat/completions": LaneSettings(max_batch_requests=3000),
            "openai:gpt-b:/v1/chat/completions": LaneSettings(max_batch_requests=2500),
            "anthropic:claude-c:/v1/messages": LaneSettings(max_batch_requests=4000),
        },
    }
    base.update(overrides)
    return make_settings(redis_url, **base)


async def test_ten_thousand_jobs_become_the_fewest_batches_earliest_deadlines_first(
    redis, redis_url, arq_pool
) -> None:
    # One deadline band for all (bands have their own test): this one is about the caps.
    settings = planning_settings(
        redis_url, scheduler=SchedulerSettings(reserve_chunk=700, batch_deadline_spread=None)
    )
    ledger = Ledger(redis)
    sizes = {("openai", "gpt-a"): 4000, ("openai", "gpt-b"): 3500, ("anthropic", "claude-c"): 2500}
    all_ids: set[str] = set()
    for (provider, model), count in sizes.items():
        # Deadlines in a shuffled order, so "earliest first" is not the enqueue order.
        ids_ = await enqueue_lane(
            ledger,
            provider,
            model,
            count,
            now_ms=NOW_MS,
            age_ms=61_000,
            deadlines=lambda i: NOW_MS + 3_600_000 + (i * 7919) % 10_000 * 1000,
        )
        all_ids.update(ids_)
    async with build_scheduler(settings, redis, arq_pool) as scheduler:
        planning_only(scheduler)
        report = await scheduler.tick(NOW)
        assert report.leader
        assert report.reserved == 10_000
        # ceil(4000/3000) + ceil(3500/2500) + ceil(2500/4000)
        assert len(report.planned) == 2 + 2 + 1
        assert {d.reason for d in report.decisions.values()} == {"max_wait"}

        seen: set[str] = set()
        by_lane: dict[str, list[tuple[int, int]]] = {}
        for batch_id in report.planned:
            record = await Batches(redis).get(batch_id)
            assert record is not None
            assert record.state == "planned"
            members = {m.decode() for m in await redis.smembers(keys.batch_jobs(batch_id))}
            assert record.requests == len(members)
            assert not members & seen, "a job sits in two batches"
            seen |= members
            jobs = await ledger.get_many(sorted(members))
            assert all(j is not None and j.state == "batched" and j.batch_id == batch_id for j in jobs)
            deadlines = [j.deadline_ms for j in jobs if j is not None]
            by_lane.setdefault(record.lane, []).append((min(deadlines), max(deadlines)))
        assert seen == all_ids
        for spans in by_lane.values():
            spans.sort()
            for (_, latest), (earliest_next, _) in zip(spans, spans[1:], strict=False):
                assert latest <= earliest_next, "a later batch holds an earlier deadline"
        for ln in sizes:
            assert (
                await redis.zcard(
                    keys.lane_queue(
                        f"{ln[0]}:{ln[1]}:"
                        + ("/v1/messages" if ln[0] == "anthropic" else "/v1/chat/completions")
                    )
                )
                == 0
            )
        queued = await arq_queue(redis)
        assert sorted(tasks.submit_job_id(b, 0) for b in report.planned) == [
            q for q in queued if q.startswith("submit:")
        ]

        again = await scheduler.tick(NOW + 1)
        assert again.planned == []
        assert again.submits == 0


async def test_cap_flush_leaves_the_remainder_to_fill(redis, redis_url, arq_pool) -> None:
    settings = planning_settings(redis_url)
    await enqueue_lane(
        Ledger(redis),
        "openai",
        "gpt-b",
        2600,
        now_ms=NOW_MS,
        age_ms=1000,
        deadlines=lambda i: NOW_MS + 86_400_000,
    )
    async with build_scheduler(settings, redis, arq_pool) as scheduler:
        planning_only(scheduler)
        report = await scheduler.tick(NOW)
    lane = "openai:gpt-b:/v1/chat/completions"
    assert report.decisions[lane].reason == "cap_requests"
    assert report.reserved == 2500
    assert await redis.zcard(keys.lane_queue(lane)) == 100


async def test_a_flush_is_cut_into_deadline_bands(redis, redis_url, arq_pool) -> None:
    """Jobs due in 4 h and 4.5 h share a batch; those due in 20 h get their own."""
    settings = planning_settings(
        redis_url,
        scheduler=SchedulerSettings(
            reserve_chunk=70, batch_deadline_spread=1.25, batch_deadline_band_min_s=1800
        ),
    )
    hour = 3_600_000
    due = (4 * hour, 4 * hour + hour // 2, 20 * hour)
    await enqueue_lane(
        Ledger(redis),
        "openai",
        "gpt-b",
        300,
        now_ms=NOW_MS,
        age_ms=61_000,
        deadlines=lambda i: NOW_MS + due[i % 3],
    )
    async with build_scheduler(settings, redis, arq_pool) as scheduler:
        planning_only(scheduler)
        report = await scheduler.tick(NOW)
        assert report.reserved == 300
        spans = []
        for batch_id in report.planned:
            members = sorted(m.decode() for m in await redis.smembers(keys.batch_jobs(batch_id)))
            jobs = await Ledger(redis).get_many(members)
            spans.append(sorted({j.deadline_ms - NOW_MS for j in jobs if j is not None}))
    # 4 h left × 1.25 = 5 h: the 4.5 h jobs fit, the 20 h ones start a band of their own.
    assert spans == [[4 * hour, 4 * hour + hour // 2], [20 * hour]]
    assert await redis.zcard(keys.lane_queue("openai:gpt-b:/v1/chat/completions")) == 0


async def test_nothing_flushes_without_a_trigger(redis, redis_url, arq_pool) -> None:
    settings = planning_settings(redis_url)
    await enqueue_lane(
        Ledger(redis),
        "openai",
        "gpt-a",
        10,
        now_ms=NOW_MS,
        age_ms=1000,
        deadlines=lambda i: NOW_MS + 86_400_000,
    )
    async with build_scheduler(settings, redis, arq_pool) as scheduler:
        planning_only(scheduler)
        report = await scheduler.tick(NOW)
    assert report.planned == []
    assert report.decisions["openai:gpt-a:/v1/chat/completions"].reason == "waiting"


async def test_deadline_pressure_uses_the_lanes_turnaround_history(redis, redis_url, arq_pool) -> None:
    """The plan step plans with the SLO tracker's turnaround (quantile + 60 s sync margin): with the
    60 s prior a job due in 150 s waits; once batches took 90-120 s it must leave now."""
    settings = planning_settings(redis_url)
    lane = "openai:gpt-a:/v1/chat/completions"
    await enqueue_lane(
        Ledger(redis), "openai", "gpt-a", 3, now_ms=NOW_MS, age_ms=1000, deadlines=lambda i: NOW_MS + 150_000
    )
    async with build_scheduler(settings, redis, arq_pool) as scheduler:
        planning_only(scheduler)
        assert (await scheduler.tick(NOW)).decisions[lane].reason == "waiting"
        await redis.lpush(keys.lane_turnarounds(lane), f"{NOW_MS}:100.0", f"{NOW_MS}:90.0", f"{NOW_MS}:120.0")
        report = await scheduler.tick(NOW + 1)  # the next tick reads the lane's health again
    assert report.decisions[lane].reason == "deadline"
    assert report.reserved == 3


async def test_due_polls_are_enqueued_once_per_due_time(redis, redis_url, arq_pool) -> None:
    settings = planning_settings(redis_url)
    await redis.zadd(keys.BATCHES_POLL, {"bat_due": NOW_MS - 5, "bat_later": NOW_MS + 60_000})
    async with build_scheduler(settings, redis, arq_pool) as scheduler:
        planning_only(scheduler)
        first = await scheduler.tick(NOW)
        second = await scheduler.tick(NOW + 1)
    assert (first.polls, second.polls) == (1, 0)
    assert tasks.poll_job_id("bat_due", NOW_MS - 5) in await arq_queue(redis)


async def test_reconciliation_is_enqueued_at_start_then_every_interval(redis, redis_url, arq_pool) -> None:
    settings = planning_settings(redis_url)
    async with build_scheduler(settings, redis, arq_pool) as scheduler:
        planning_only(scheduler)
        assert (await scheduler.tick(NOW)).reconcile
        await redis.delete("arq:queue", "arq:job:reconcile")  # as if a worker ran it
        assert not (await scheduler.tick(NOW + 1)).reconcile
        assert (await scheduler.tick(NOW + settings.scheduler.reconcile_interval_s)).reconcile
    assert "reconcile" in await arq_queue(redis)


async def test_reconciliation_hands_ingestion_again_to_batches_ended_long_ago(
    redis, redis_url, arq_pool
) -> None:
    """An ended batch whose ingestion task gave up is swept; a fresh or ingested one is not."""
    settings = planning_settings(redis_url)
    stale = NOW_MS - int(settings.scheduler.planned_timeout_s * 1000) - 1
    for batch_id, state, ended in (("bat_stale", "ended", stale), ("bat_fresh", "ended", NOW_MS)):
        await redis.hset(keys.batch(batch_id), mapping={"id": batch_id, "state": state, "ended_ms": ended})
        await redis.zadd(keys.BATCHES_LIVE, {batch_id: ended})
    async with build_scheduler(settings, redis, arq_pool) as scheduler:
        planning_only(scheduler)
        report = await scheduler.tick(NOW)
    assert report.steps["swept"] == 1
    queued = await arq_queue(redis)
    assert tasks.ingest_job_id("bat_stale") in queued
    assert tasks.ingest_job_id("bat_fresh") not in queued


async def test_a_step_is_added_with_one_line_and_failures_are_reported(redis, redis_url, arq_pool) -> None:
    calls: list[int] = []

    async def extra(tick: Tick) -> None:
        calls.append(tick.now_ms)
        tick.report.steps["extra"] = "done"

    async def broken(tick: Tick) -> None:
        raise RuntimeError("boom")

    async with build_scheduler(planning_settings(redis_url), redis, arq_pool) as scheduler:
        planning_only(scheduler)
        scheduler.steps += [("broken", broken), ("extra", extra)]
        report = await scheduler.tick(NOW)
    assert calls == [NOW_MS]
    assert report.steps["extra"] == "done"
    assert report.errors == {"broken": "RuntimeError: boom"}


async def test_the_tick_loop_outlives_a_redis_outage_and_leads_again() -> None:
    """Redis restarts under a running scheduler: the loop keeps trying, then takes the lease again."""
    import asyncio

    from redis.asyncio import Redis

    from batchshift.embedded_redis import embedded_redis, free_port

    port = free_port()
    with embedded_redis(port) as url:
        settings = planning_settings(url, scheduler=SchedulerSettings(tick_interval_s=0.05, lease_ttl_s=1))
        redis = Redis.from_url(url)
        pool = await create_pool(url)
        scheduler = build_scheduler(settings, redis, pool)
        loop = asyncio.create_task(scheduler.run_forever())
        while not scheduler.leader.is_leader:  # noqa: ASYNC110 - the loop's own ticks; the test timeout bounds it
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # Redis is gone: ticks fail and are retried
    assert not loop.done()
    with embedded_redis(port):
        while not scheduler.leader.is_leader:  # noqa: ASYNC110 - the loop's own ticks; the test timeout bounds it
            assert not loop.done()
            await asyncio.sleep(0.05)
        assert not loop.done()
        await scheduler.close()
        await asyncio.wait_for(loop, timeout=5)
        await pool.aclose()
        await redis.aclose()


async def test_a_tick_walks_only_active_lanes_once_idle_ones_are_pruned(redis, redis_url, arq_pool) -> None:
    settings = planning_settings(redis_url, scheduler=SchedulerSettings(lane_idle_s=600))
    ledger = Ledger(redis)
    start_ms = NOW_MS - 3_600_000
    for i in range(150):  # lanes used an hour ago and empty since
        job = new_job("openai", f"old-{i}", NOW_MS + 86_400_000, created_ms=start_ms)
        await ledger.enqueue(job)
        await ledger.cancel(job.id, start_ms)
    await enqueue_lane(
        ledger, "openai", "gpt-a", 3, now_ms=NOW_MS, age_ms=1000, deadlines=lambda i: NOW_MS + 86_400_000
    )
    scheduler = planning_only(build_scheduler(settings, redis, arq_pool, holder="t"))
    scheduler.steps.append(("lanes", PruneStep(settings, redis)))
    first = await scheduler.tick(NOW)
    assert len(first.decisions) == 151
    assert first.steps["lanes_pruned"] == 150
    second = await scheduler.tick(NOW + 1)
    assert list(second.decisions) == ["openai:gpt-a:/v1/chat/completions"]
    assert await redis.smembers(keys.LANES) == {b"openai:gpt-a:/v1/chat/completions"}


async def test_build_scheduler_assembles_the_tick_in_order_and_no_step_holds_the_scheduler(
    redis, redis_url, arq_pool
) -> None:
    """The SLO step runs first (flips before planning); steps get narrow parts, never the scheduler."""
    scheduler = build_scheduler(planning_settings(redis_url), redis, arq_pool, holder="t")
    names = [name for name, _ in scheduler.steps]
    assert names == ["slo", "plan", "polls", "reconcile", "retention", "sync", "webhooks", "lanes"]
    for _, step in scheduler.steps:
        owner = getattr(step, "__self__", step)  # a bound method's object, else the step object
        assert all(not isinstance(part, Scheduler) for part in vars(owner).values())


async def test_a_new_term_reconciles_at_its_first_tick(redis, redis_url, arq_pool) -> None:
    """A replica that lost the lease and takes it again reconciles at once, not an interval later."""
    settings = planning_settings(redis_url)
    async with build_scheduler(settings, redis, arq_pool, holder="a") as scheduler:
        planning_only(scheduler)
        first = await scheduler.tick(NOW)
        await redis.delete("arq:queue", "arq:job:reconcile")  # as if a worker ran it
        assert not (await scheduler.tick(NOW + 1)).reconcile  # same term, inside the interval
        await scheduler.leader.release()
        again = await scheduler.tick(NOW + 2)
    assert first.reconcile
    assert again.token != first.token
    assert again.reconcile
