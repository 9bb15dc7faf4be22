"""Soak: 200,000 jobs through the whole pipeline with a short retention; Redis memory must come back.

Starts its own redis-server and the provider emulator (own process). Jobs go in waves of up to
50,000 (one OpenAI batch each): intake (the ledger's enqueue script, as the API runs it), the
scheduler's ticks (flush, reservation, polls, SLO, retention), arq workers in burst mode (submit to
the emulator, poll, stream the results in, finish in Lua). No callback URLs: webhooks are off.
Retention is ``SOAK_TTL_S`` seconds, so early waves' records are trimmed while later waves run.

Redis ``used_memory`` is read before (after a 1,000-job warm-up and its retention, so the scripts,
lanes, aggregates and connections a running system always holds are counted), at every pass of the
loop (the peak), and after: once retention has passed the trim runs to completion. The run fails if
``after`` is more than 10% over ``before``. Before and after are read with Redis's slow log emptied:
it keeps copies of up to ``slowlog-max-len`` slow commands' arguments (our large Lua calls), a
bounded diagnostic of Redis's own, worth about 200 KB after a soak, which is not data we store;
and without the clients' query and output buffers (``mem_clients_normal``), which Redis shrinks
on its own schedule after large pipelines (up to 1.4 MB just after a wave), and which are not
data either. Redis also shrinks its keyspace's hash tables (grown to hold a wave's keys) only
in its periodic cron, a step at a time, so ``after`` is read once ``used_memory`` stops falling
(no lower reading for ``SETTLE_READS`` readings ``SETTLE_STEP_S`` apart, ``SETTLE_S`` at most). ``BATCHSHIFT_SOAK_JOBS`` sets a smaller count for quick runs. A failed check is
printed with the other stages' rows, and ``make bench`` then exits non-zero.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from typing import Any

import orjson
from redis.asyncio import Redis

from batchshift.embedded_redis import embedded_redis
from benchmarks.support import emulator_process, peak_growth_mb, reset_peak
from config.settings import (
    LaneDefaults,
    ProviderSettings,
    RetentionSettings,
    SchedulerSettings,
    Settings,
    SloSettings,
    TenantSettings,
)
from scheduler.ledger import ids, keys
from scheduler.ledger.jobs import LIVE, NewJob
from scheduler.ledger.ledger import Ledger
from scheduler.ledger.retention import Retention
from scheduler.ledger.store import connect, connect_arq
from scheduler.service import Scheduler, build_scheduler
from workers.worker import run_burst

JOBS = int(os.environ.get("BATCHSHIFT_SOAK_JOBS", "200000"))
WAVE = 50_000  # one OpenAI batch's limit
WARMUP = 1_000
SOAK_TTL_S = 3
TENANT = "soak"
MODEL = "gpt-4o-mini"
ENDPOINT = "/v1/chat/completions"
ENQUEUE_CHUNK = 5_000
# Memory after the soak may exceed the start by at most this share.
TOLERANCE = 0.10
# Reading memory once it has settled (see the module docstring).
SETTLE_S = 60.0
SETTLE_STEP_S = 0.5
SETTLE_READS = 6


def _settings(redis_url: str, emulator_url: str) -> Settings:
    return Settings(
        redis_url=redis_url,
        providers={
            "openai": ProviderSettings(kind="openai", base_url=emulator_url + "/v1", api_key="sk-soak")
        },
        tenants={TENANT: TenantSettings(api_key="soak-key")},
        lane_defaults=LaneDefaults(max_wait=0, max_batch_requests=WAVE),
        scheduler=SchedulerSettings(
            poll_initial_s=0.2, poll_max_s=0.5, poll_backoff=1, reconcile_interval_s=1
        ),
        slo=SloSettings(prior_turnaround_s=60),
        retention=RetentionSettings(job_ttl_s=SOAK_TTL_S),
    )


def family(key: str) -> str:
    """A key's name up to its first id (a lane's hash tag counts as one segment)."""
    parts = []
    for part in re.sub(r"\{[^}]*\}", "{lane}", key).split(":"):
        if re.match(r"^(job_|bat_|wh_|msg_|batch_|\d)", part):
            break
        parts.append(part)
    return ":".join(parts)


async def _families(redis: Redis) -> dict[str, tuple[int, int]]:
    """Key family -> (keys, bytes), largest first: what is left when memory did not come back."""
    sizes: dict[str, list[int]] = {}
    async for raw in redis.scan_iter(count=1000):
        entry = sizes.setdefault(family(raw.decode()), [0, 0])
        entry[0] += 1
        entry[1] += int(await redis.memory_usage(raw) or 0)
    return {k: (n, b) for k, (n, b) in sorted(sizes.items(), key=lambda kv: -kv[1][1])}


async def _used_memory(redis: Redis) -> int:
    info = await redis.info("memory")
    return int(info["used_memory"])


async def _settled_memory(redis: Redis) -> int:
    """``used_memory`` without Redis's slow log and the clients' buffers, once it stops falling
    (see the module docstring): at most ``SETTLE_S`` seconds."""
    await redis.slowlog_reset()
    readings: list[int] = []
    for _ in range(int(SETTLE_S / SETTLE_STEP_S)):
        info = await redis.info("memory")
        readings.append(int(info["used_memory"]) - int(info.get("mem_clients_normal", 0)))
        if len(readings) > SETTLE_READS and min(readings[-SETTLE_READS:]) >= min(readings[:-SETTLE_READS]):
            break  # no lower reading for SETTLE_READS steps: settled
        await asyncio.sleep(SETTLE_STEP_S)
    return min(readings)


async def _enqueue(ledger: Ledger, n: int) -> None:
    now = int(time.time() * 1000)
    for start in range(0, n, ENQUEUE_CHUNK):
        jobs = [
            NewJob(
                id=ids.job_id(),
                tenant=TENANT,
                provider="openai",
                endpoint=ENDPOINT,
                model=MODEL,
                body=orjson.dumps(
                    {"model": MODEL, "messages": [{"role": "user", "content": f"question {i}"}]}
                ),
                deadline_ms=now + 86_400_000,
                created_ms=now,
                tags={"feature": f"f{i % 5}"},
            )
            for i in range(start, min(n, start + ENQUEUE_CHUNK))
        ]
        await ledger.enqueue_many(jobs)


async def _live(redis: Redis) -> int:
    async with redis.pipeline(transaction=False) as pipe:
        for state in sorted(LIVE):
            pipe.zcard(keys.tenant_status(TENANT, state))
        return sum(await pipe.execute())


async def _drive(settings: Settings, redis: Redis, scheduler: Scheduler, n: int, peak: list[int]) -> None:
    """Enqueue ``n`` jobs and tick the scheduler and burst workers until none is live."""
    await _enqueue(Ledger.for_settings(redis, settings), n)
    while True:
        await scheduler.tick(time.time())
        await run_burst(settings)
        peak[0] = max(peak[0], await _used_memory(redis))
        if await _live(redis) == 0:
            return
        await asyncio.sleep(0.1)  # the emulator's batch turnaround runs on its clock


async def _expire(settings: Settings, redis: Redis) -> None:
    """Wait out the retention, then trim until nothing is left to trim."""
    await asyncio.sleep(SOAK_TTL_S + 1)
    retention = Retention(redis, settings)
    while True:
        report = await retention.trim(int(time.time() * 1000))
        if report.total() == 0 and not report.unfinished:
            return


async def run() -> list[dict[str, Any]]:
    start_kb = reset_peak()
    with embedded_redis() as redis_url, emulator_process(turnaround_s=0.2) as emulator_url:
        settings = _settings(redis_url, emulator_url)
        redis, pool = connect(settings), connect_arq(settings)
        try:
            async with build_scheduler(settings, redis, pool) as scheduler:
                peak = [0]
                await _drive(settings, redis, scheduler, WARMUP, peak)
                await _expire(settings, redis)
                before = await _settled_memory(redis)
                peak = [before]
                started = time.perf_counter()
                for wave_start in range(0, JOBS, WAVE):
                    await _drive(settings, redis, scheduler, min(WAVE, JOBS - wave_start), peak)
                elapsed = time.perf_counter() - started
                await _expire(settings, redis)
                after = await _settled_memory(redis)
                left = await _families(redis)
        finally:
            await pool.aclose()
            await redis.aclose()
    growth = after / before - 1
    mb = 1024 * 1024
    figure = (
        f"soak: {JOBS:,} jobs, retention {SOAK_TTL_S} s; Redis used_memory before {before / mb:.2f} MB, "
        f"peak {peak[0] / mb:.1f} MB, after {after / mb:.2f} MB ({growth:+.1%})"
    )
    failed = growth > TOLERANCE
    if failed:
        top = ", ".join(f"{name} {n} keys {b / mb:.2f} MB" for name, (n, b) in list(left.items())[:8])
        figure += f" FAILED: memory did not come back within {TOLERANCE:.0%}; left: {top}"
    return [
        {
            "figure": figure,
            "throughput": JOBS / elapsed,
            "unit": "jobs/s",
            "peak_mb": peak_growth_mb(start_kb),
            "redis_before": before,
            "redis_peak": peak[0],
            "redis_after": after,
            "failed": failed,
        }
    ]


if __name__ == "__main__":
    for row in asyncio.run(run()):
        print(row)
