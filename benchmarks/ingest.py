"""Ingestion benchmark: results applied per second from a 50,000-line emulator batch, against a raw baseline.

Ours: ``ingest_batch`` on an ended 50,000-job OpenAI batch (streamed download, adapter parsing,
pricing, guarded Lua finish in 500-line chunks with the cursor in the same transaction). Baseline,
same run, same output file, a second Redis database: stream the file with plain httpx, parse each
line with orjson and write the result and the job's state in pipelined chunks of 500, with no
guard, no pricing and no aggregates. The emulator runs in its own process. Target: ratio at least
0.5. Peak is our step's resident-set growth (``VmHWM``).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from benchmarks.support import emulator_process, reset_peak, status_kb

if TYPE_CHECKING:
    from workers.context import WorkerContext

JOBS = 50_000
CHUNK = 500
ENDPOINT = "/v1/chat/completions"
MODEL = "gpt-4o-mini"


async def _prepare(redis_url: str, url: str) -> tuple[WorkerContext, str]:
    """50,000 queued jobs reserved into one batch, submitted to the emulator and polled until it ended."""
    from config.settings import ProviderSettings, Settings
    from scheduler.ledger import keys
    from scheduler.ledger.clock import ServerClock
    from scheduler.ledger.ids import batch_id, job_id
    from scheduler.ledger.jobs import NewJob
    from scheduler.ledger.ledger import Ledger
    from scheduler.ledger.tasks import create_pool
    from scheduler.planning.batches import Batches
    from scheduler.planning.lanes import effective
    from workers.http import build_client
    from workers.providers import make_adapter
    from workers.tasks.batches import poll_batch, submit_batch
    from workers.tasks.outcomes import PollOutcome

    provider = ProviderSettings(kind="openai", base_url=url + "/v1", api_key="sk-bench")
    settings = Settings(redis_url=redis_url, providers={"openai": provider})
    redis = await create_pool(redis_url)
    await redis.flushall()
    http = build_client(provider.http)
    ledger = Ledger(redis)
    ctx: WorkerContext = {
        "redis": redis,
        "settings": settings,
        "ledger": ledger,
        "http": http,
        "webhook_http": http,  # no webhooks in this stage
        "adapters": {"openai": make_adapter("openai", provider, http)},
        "hooks": {},
        "clock": ServerClock(redis),
    }
    now = int(time.time() * 1000)
    for start in range(0, JOBS, 5000):
        jobs = [
            NewJob(
                job_id(),
                "bench",
                "openai",
                ENDPOINT,
                MODEL,
                orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": f"question {i}"}]}),
                now + 86_400_000,
                now,
            )
            for i in range(start, start + 5000)
        ]
        await ledger.enqueue_many(jobs)
    await redis.set(keys.LEADER_FENCE, "1")
    bid = batch_id()
    await Batches(redis).reserve(
        effective(settings, "openai", MODEL, ENDPOINT), bid, token=1, now_ms=now, chunk=5000
    )
    await submit_batch(ctx, bid)
    while await poll_batch(ctx, bid) is not PollOutcome.ENDED:  # noqa: ASYNC110 -- polling a remote batch
        await asyncio.sleep(0.5)
    return ctx, bid


async def _raw(redis_url: str, url: str, provider_batch_id: str) -> dict[str, Any]:
    """Stream the output file, parse each line, write result + state in pipelined chunks (DB 1)."""
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url.rsplit("/", 1)[0] + "/1")  # the URL's own database would win over db=
    await redis.flushdb()
    headers = {"authorization": "Bearer sk-bench"}
    async with httpx.AsyncClient(base_url=url + "/v1", headers=headers, timeout=120) as client:
        doc = (await client.get(f"/batches/{provider_batch_id}")).json()
        started = time.perf_counter()
        count = 0
        pipe = redis.pipeline(transaction=False)
        async with client.stream("GET", f"/files/{doc['output_file_id']}/content") as response:
            async for raw in response.aiter_lines():
                if not raw:
                    continue
                line = orjson.loads(raw)
                body = line["response"]["body"]
                pipe.set(f"raw:result:{line['custom_id']}", orjson.dumps(body))
                pipe.hset(
                    f"raw:job:{line['custom_id']}",
                    mapping={"state": "succeeded", "usage": orjson.dumps(body.get("usage"))},
                )
                count += 1
                if count % CHUNK == 0:
                    await pipe.execute()
        await pipe.execute()
        seconds = time.perf_counter() - started
    await redis.aclose()
    return {"seconds": seconds, "count": count}


async def run() -> list[dict[str, Any]]:
    """Results ingested per second, ours against the raw baseline."""
    from batchshift.embedded_redis import embedded_redis
    from workers.tasks.ingest import ingest_batch

    with embedded_redis() as redis_url, emulator_process() as url:
        ctx, bid = await _prepare(redis_url, url)
        record = await ctx["redis"].hget(f"bs:batch:{bid}", "provider_batch_id")  # type: ignore[misc]
        base = await _raw(redis_url, url, record.decode())
        start_kb = reset_peak()
        started = time.perf_counter()
        totals = await ingest_batch(ctx, bid)
        seconds = time.perf_counter() - started
        peak = max(0, status_kb("VmHWM") - start_kb) / 1024
        await ctx["http"].aclose()
        await ctx["redis"].aclose()
    if totals.get("succeeded") != JOBS or base["count"] != JOBS:
        raise RuntimeError(f"expected {JOBS} results, got {totals} / {base['count']}")
    throughput, baseline = JOBS / seconds, JOBS / base["seconds"]
    return [
        {
            "figure": f"ingest a {JOBS:,}-line batch (peak = growth)",
            "name": "ingest results",
            "throughput": throughput,
            "unit": "results/s",
            "baseline": baseline,
            "ratio": throughput / baseline,
            "peak_mb": peak,
            "peak_mem_mb": peak,
        }
    ]


if __name__ == "__main__":
    for row in asyncio.run(run()):
        print(row)
