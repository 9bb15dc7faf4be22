"""Planning throughput: jobs per second moved from lane queues into planned batches by the scheduler.

Starts its own redis-server. Each round enqueues the same jobs (three lanes, shuffled deadlines)
and times one scheduler tick that reserves all of them (planning steps only: flush decisions,
the fenced, chunked ``reserve_batch`` script, ``submit_batch`` enqueues). The baseline, in the same
run and on the same data, is the floor cost of the same moves in raw redis-py with no checks:
ZPOPMIN the lane queue, ZREM the arrival index and HSET each job ``batched``, SADD the batch set,
pipelined. The ratio is planning throughput over the baseline's. Peak memory is ru_maxrss of this
process. The same jobs in prompt prefix groups measure prefix grouping's reservation (the band's
prefixes read, whole groups chosen, ``reserve_jobs``) against the deadline-order one.

A second figure is one whole scheduler tick (every step, the SLO tracker's included) over
``ACTIVE_LANES`` active lanes, each holding jobs that do not flush yet: a tick's work grows with
the active lanes, and it must stay under the tick interval (the ratio column: tick / interval).
The SLO step reads every lane in one pipelined round trip and writes every lane's fenced snapshot
in another, so a tick's round trips do not grow with the lanes; its commands do, by a constant per
lane (a third figure: Redis's own ``total_commands_processed`` per tick, per lane).
"""

from __future__ import annotations

import resource
import time
from typing import Any

import orjson
from redis.asyncio import Redis

from batchshift.embedded_redis import embedded_redis
from config.settings import LaneSettings, ProviderSettings, SchedulerSettings, Settings, SloSettings
from scheduler.ledger import ids, keys
from scheduler.ledger.jobs import NewJob
from scheduler.ledger.ledger import Ledger
from scheduler.ledger.tasks import create_pool
from scheduler.service import Scheduler, build_scheduler

ACTIVE_LANES = 1_000
TICKS = 5

JOBS_PER_LANE = 20_000
LANES = (("openai", "gpt-4o-mini"), ("openai", "gpt-4.1"), ("anthropic", "claude-haiku"))
ENDPOINTS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}
BATCH_CAP = 5_000
ROUNDS = 3
PREFIX_GROUPS = 20  # the grouped figure: jobs in this many prompt prefix groups
BODY = orjson.dumps({"messages": [{"role": "user", "content": "Summarise this ticket in one line. " * 8}]})


def _settings(redis_url: str) -> Settings:
    return Settings(
        redis_url=redis_url,
        providers={
            "openai": ProviderSettings(kind="openai", base_url="http://127.0.0.1:9/v1"),
            "anthropic": ProviderSettings(kind="anthropic", base_url="http://127.0.0.1:9"),
        },
        lanes={f"{p}:{m}:{ENDPOINTS[p]}": LaneSettings(max_batch_requests=BATCH_CAP) for p, m in LANES},
        scheduler=SchedulerSettings(reserve_chunk=5_000),
        slo=SloSettings(prior_turnaround_s=60),
    )


async def _fill(ledger: Ledger, now_ms: int, groups: int = 0) -> list[str]:
    """Queue the jobs (arrived two minutes ago, so max_wait flushes everything); with ``groups``,
    in that many prompt prefix groups, interleaved."""
    job_ids: list[str] = []
    for provider, model in LANES:
        for start in range(0, JOBS_PER_LANE, 2_000):
            jobs = [
                NewJob(
                    id=ids.job_id(now_ms),
                    tenant="bench",
                    provider=provider,
                    endpoint=ENDPOINTS[provider],
                    model=model,
                    body=BODY,
                    deadline_ms=now_ms + 3_600_000 + (n * 7919) % 100_000 * 1000,
                    created_ms=now_ms - 120_000,
                    prefix=f"group{n % groups:04d}" if groups else "",
                )
                for n in range(start, start + 2_000)
            ]
            await ledger.enqueue_many(jobs)
            job_ids.extend(j.id for j in jobs)
    return job_ids


async def _planned(redis: Redis, scheduler: Scheduler, now: float) -> float:
    start = time.perf_counter()
    report = await scheduler.tick(now)
    elapsed = time.perf_counter() - start
    assert report.reserved == JOBS_PER_LANE * len(LANES), report
    return elapsed


async def _baseline(redis: Redis) -> float:
    """Raw redis-py: pop each lane's earliest jobs and mark them batched, pipelined, no checks."""
    start = time.perf_counter()
    for provider, model in LANES:
        lane = f"{provider}:{model}:{ENDPOINTS[provider]}"
        for _ in range(0, JOBS_PER_LANE, BATCH_CAP):
            batch_id = ids.batch_id()
            popped = await redis.zpopmin(keys.lane_queue(lane), BATCH_CAP)
            async with redis.pipeline(transaction=False) as pipe:
                for job_id, _ in popped:
                    pipe.zrem(keys.lane_arrivals(lane), job_id)
                    pipe.hset(keys.job(job_id.decode()), mapping={"state": "batched", "batch_id": batch_id})
                    pipe.sadd(keys.batch_jobs(batch_id), job_id)
                pipe.hset(keys.batch(batch_id), mapping={"state": "planned", "requests": len(popped)})
                await pipe.execute()
    return time.perf_counter() - start


async def _tick_at_lanes(url: str, redis: Redis, pool: Any) -> tuple[list[float], list[float], list[int]]:
    """Seconds per whole tick, per plan step, and Redis commands per tick, over ACTIVE_LANES lanes of
    3 queued jobs each (none due to flush)."""
    await redis.flushdb()
    settings = Settings(
        redis_url=url,
        providers={
            "openai": ProviderSettings(kind="openai", base_url="http://127.0.0.1:9/v1", allow_any_model=True)
        },
        slo=SloSettings(prior_turnaround_s=60),
    )
    now = time.time()
    now_ms = int(now * 1000)
    ledger = Ledger(redis)
    for start in range(0, ACTIVE_LANES, 100):
        await ledger.enqueue_many(
            [
                NewJob(
                    id=ids.job_id(now_ms),
                    tenant="bench",
                    provider="openai",
                    endpoint="/v1/chat/completions",
                    model=f"model-{n}",
                    body=BODY,
                    deadline_ms=now_ms + 86_400_000,
                    created_ms=now_ms,
                )
                for n in range(start, start + 100)
                for _ in range(3)
            ]
        )
    seconds: list[float] = []
    plan_s: list[float] = []
    commands: list[int] = []
    async with build_scheduler(settings, redis, pool) as scheduler:
        scheduler.steps = [
            (name, _timed(step, plan_s) if name == "plan" else step) for name, step in scheduler.steps
        ]
        for i in range(TICKS + 1):
            processed = await _commands_processed(redis)
            start_s = time.perf_counter()
            report = await scheduler.tick(now + i)
            elapsed = time.perf_counter() - start_s
            tick_commands = await _commands_processed(redis) - processed - 1  # less the INFO before
            assert report.leader, report
            assert len(report.decisions) == ACTIVE_LANES, report.errors
            assert not report.planned, report.planned
            assert not report.errors, report.errors
            if i:  # the first tick of a term also reconciles and adopts the registry
                seconds.append(elapsed)
                commands.append(tick_commands)
    return seconds, plan_s[1:], commands


async def _commands_processed(redis: Redis) -> int:
    """Commands the server has run so far (its own counter; this INFO included)."""
    return int((await redis.info("stats"))["total_commands_processed"])


def _timed(step: Any, into: list[float]) -> Any:
    async def timed(tick: Any) -> None:
        start = time.perf_counter()
        await step(tick)
        into.append(time.perf_counter() - start)

    return timed


async def run() -> list[dict[str, Any]]:
    total = JOBS_PER_LANE * len(LANES)
    planned_s: list[float] = []
    grouped_s: list[float] = []
    baseline_s: list[float] = []
    with embedded_redis() as url:
        redis = Redis.from_url(url)
        pool = await create_pool(url)
        settings = _settings(url)
        try:
            tick_s, plan_step_s, tick_commands = await _tick_at_lanes(url, redis, pool)
            for _ in range(ROUNDS):
                await redis.flushdb()
                now = time.time()
                await _fill(Ledger(redis), int(now * 1000))
                async with build_scheduler(settings, redis, pool) as scheduler:
                    scheduler.steps = [(n, s) for n, s in scheduler.steps if n == "plan"]
                    planned_s.append(await _planned(redis, scheduler, now))
                await redis.flushdb()
                await _fill(Ledger(redis), int(now * 1000), PREFIX_GROUPS)
                async with build_scheduler(settings, redis, pool) as scheduler:
                    scheduler.steps = [(n, s) for n, s in scheduler.steps if n == "plan"]
                    grouped_s.append(await _planned(redis, scheduler, now))
                await redis.flushdb()
                await _fill(Ledger(redis), int(now * 1000))
                baseline_s.append(await _baseline(redis))
        finally:
            await pool.aclose()
            await redis.aclose()
    throughput = total / min(planned_s)
    grouped = total / min(grouped_s)
    baseline = total / min(baseline_s)
    interval_ms = SchedulerSettings().tick_interval_s * 1000
    tick_ms = sorted(tick_s)[len(tick_s) // 2] * 1000
    plan_ms = sorted(plan_step_s)[len(plan_step_s) // 2] * 1000
    return [
        {
            "figure": f"lanes -> planned batches ({total:,} jobs, {len(LANES)} lanes, cap {BATCH_CAP:,})",
            "throughput": throughput,
            "unit": "jobs/s",
            "baseline": baseline,
            "ratio": throughput / baseline,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        },
        {
            "figure": f"the same in {PREFIX_GROUPS} prompt prefix groups, reserved whole "
            "(baseline: the same jobs without prefixes, deadline order)",
            "throughput": grouped,
            "unit": "jobs/s",
            "baseline": throughput,
            "ratio": grouped / throughput,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        },
        {
            "figure": f"whole scheduler tick, {ACTIVE_LANES:,} active lanes (median of {TICKS}, "
            f"slowest {max(tick_s) * 1000:,.0f} ms; baseline: the tick interval)",
            "throughput": tick_ms,
            "unit": "ms",
            "baseline": interval_ms,
            "ratio": tick_ms / interval_ms,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        },
        {
            "figure": f"of which the plan step (lane reads pipelined), {ACTIVE_LANES:,} active lanes",
            "throughput": plan_ms,
            "unit": "ms",
            "baseline": interval_ms,
            "ratio": plan_ms / interval_ms,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        },
        {
            "figure": f"Redis commands per tick per active lane ({ACTIVE_LANES:,} lanes; most ticked)",
            "throughput": max(tick_commands) / ACTIVE_LANES,
            "unit": "cmds",
            "baseline": None,
            "ratio": None,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        },
    ]
