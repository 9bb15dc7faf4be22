"""Planning throughput: jobs per second moved from lane queues into planned batches by the scheduler.

Starts its own redis-server. Each round enqueues the same jobs (three lanes, shuffled deadlines)
and times one scheduler tick that reserves all of them (planning steps only: flush decisions,
the fenced, chunked ``reserve_batch`` script, ``submit_batch`` enqueues). The baseline, in the same
run and on the same data, is the floor cost of the same moves in raw redis-py with no checks:
ZPOPMIN the lane queue, ZREM the arrival index and HSET each job ``batched``, SADD the batch set,
pipelined. The ratio is planning throughput over the baseline's. Peak memory is ru_maxrss of this
process.
"""

from __future__ import annotations

import resource
import time
from typing import Any

import orjson
from redis.asyncio import Redis

from batchshift.embedded_redis import embedded_redis
from config.settings import LaneSettings, ProviderSettings, SchedulerSettings, Settings, SloSettings
from scheduler import ids, keys
from scheduler.jobs import NewJob
from scheduler.ledger import Ledger
from scheduler.service import Scheduler
from scheduler.tasks import create_pool

JOBS_PER_LANE = 20_000
LANES = (("openai", "gpt-4o-mini"), ("openai", "gpt-4.1"), ("anthropic", "claude-haiku"))
ENDPOINTS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}
BATCH_CAP = 5_000
ROUNDS = 3
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


async def _fill(ledger: Ledger, now_ms: int) -> list[str]:
    """Queue the jobs (arrived two minutes ago, so max_wait flushes everything)."""
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


async def run() -> list[dict[str, Any]]:
    total = JOBS_PER_LANE * len(LANES)
    planned_s: list[float] = []
    baseline_s: list[float] = []
    with embedded_redis() as url:
        redis = Redis.from_url(url)
        pool = await create_pool(url)
        settings = _settings(url)
        try:
            for _ in range(ROUNDS):
                await redis.flushdb()
                now = time.time()
                await _fill(Ledger(redis), int(now * 1000))
                async with Scheduler(settings, redis, pool) as scheduler:
                    scheduler.steps = [(n, s) for n, s in scheduler.steps if n == "plan"]
                    planned_s.append(await _planned(redis, scheduler, now))
                await redis.flushdb()
                await _fill(Ledger(redis), int(now * 1000))
                baseline_s.append(await _baseline(redis))
        finally:
            await pool.aclose()
            await redis.aclose()
    throughput = total / min(planned_s)
    baseline = total / min(baseline_s)
    return [
        {
            "figure": f"lanes -> planned batches ({total:,} jobs, {len(LANES)} lanes, cap {BATCH_CAP:,})",
            "throughput": throughput,
            "unit": "jobs/s",
            "baseline": baseline,
            "ratio": throughput / baseline,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    ]
