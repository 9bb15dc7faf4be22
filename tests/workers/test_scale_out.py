"""Scale-out: three arq workers on one Redis ingest three ended batches at the same time, each job's
result applied once. Concurrency is shown by construction, never by timing: every ingestion waits
at a barrier that opens only once all three are inside, so the test passes only if three workers
hold one ingestion each at once (each worker runs one task at a time)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from config.settings import Settings, SloSettings, WorkerSettings
from emulator.server import EmulatorControl
from scheduler.ledger import keys, tasks
from scheduler.planning.batches import Batches
from tests.conftest import make_settings
from tests.workers.batch_harness import enqueue_jobs, make_ctx, run_batch
from tests.workers.conftest import FAST_HTTP, openai_settings
from workers.context import Hook
from workers.http import build_client
from workers.worker import run_burst

WORKERS = 3
JOBS_PER_BATCH = 6
BARRIER_LIMIT_S = 60  # only keeps a broken run from hanging: a worker short means no one gets through


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with build_client(FAST_HTTP) as client:
        yield client


def scale_settings(redis_url: str, url: str) -> Settings:
    # One task at a time per worker, and chunks of 2 lines so each ingestion passes its
    # ``ingest_after_chunk`` point while the batch is still being applied.
    return make_settings(
        redis_url,
        providers={"openai": openai_settings(url, allow_any_model=True)},
        worker=WorkerSettings(max_jobs=1, ingest_chunk=2),
        slo=SloSettings(prior_turnaround_s=1.0),
    )


async def test_three_workers_ingest_three_batches_at_once(
    redis: Redis, redis_url: str, emulator: EmulatorControl, http: httpx.AsyncClient
) -> None:
    settings = scale_settings(redis_url, emulator.url)
    emulator.configure(turnaround_s=0)
    ctx = await make_ctx(settings, http)
    job_ids: list[str] = []
    batch_ids = []
    for _ in range(WORKERS):
        job_ids += await enqueue_jobs(ctx["ledger"], JOBS_PER_BATCH)
        batch_ids.append(await run_batch(ctx))  # its end enqueues ingest_batch (no worker runs yet)
    for bid in batch_ids:
        assert await redis.exists(f"arq:job:{tasks.ingest_job_id(bid)}") == 1

    barrier = asyncio.Barrier(WORKERS)
    inside: dict[str, str] = {}  # batch id -> the worker that ingested it

    def at_barrier(worker: str) -> Hook:
        async def hook(**info: Any) -> None:
            if info["batch_id"] in inside:
                return
            inside[info["batch_id"]] = worker
            async with asyncio.timeout(BARRIER_LIMIT_S):
                await barrier.wait()

        return hook

    done = await asyncio.gather(
        *(run_burst(settings, hooks={"ingest_after_chunk": at_barrier(f"w{n}")}) for n in range(WORKERS))
    )

    assert sorted(inside) == sorted(batch_ids)
    assert sorted(inside.values()) == ["w0", "w1", "w2"]  # a different worker for each batch
    assert [w.jobs_failed for w in done] == [0, 0, 0]
    states = [await redis.hget(keys.job(j), "state") for j in job_ids]  # type: ignore[misc]
    assert states == [b"succeeded"] * len(job_ids)
    for bid in batch_ids:
        record = await Batches(redis).get(bid)
        assert record is not None
        assert record.state == "ingested"
        assert record.raw.get("ingest_succeeded") == str(JOBS_PER_BATCH)
        assert "ingest_skipped" not in record.raw  # nothing applied twice
    await ctx["redis"].aclose()
