"""Driving jobs into a real emulator batch for the ingestion tests: enqueue, reserve, submit, poll to its end.

Reservation, submission and polling are the scheduler's and workers' own code (Batches.reserve,
submit_batch, poll_batch); the tests then call ingest_batch themselves, so they can interrupt it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import arq
import httpx
import orjson
from arq.connections import ArqRedis

from config.settings import Settings
from scheduler.ledger import keys, tasks
from scheduler.ledger.clock import ServerClock
from scheduler.ledger.ids import batch_id as new_batch_id
from scheduler.ledger.ids import job_id as new_job_id
from scheduler.ledger.jobs import NewJob
from scheduler.ledger.ledger import Ledger
from scheduler.planning.batches import Batches
from scheduler.planning.lanes import effective
from workers.context import WorkerContext
from workers.providers import make_adapter
from workers.tasks.batches import poll_batch, submit_batch
from workers.tasks.outcomes import PollOutcome, SubmitOutcome

ENDPOINT = "/v1/chat/completions"
MODEL = "gpt-4o-mini"


async def make_ctx(settings: Settings, http: httpx.AsyncClient, db: int = 0) -> WorkerContext:
    """A worker ctx as the worker's startup builds it, on Redis database ``db`` (``http`` serves
    webhooks too: these tests deliver none)."""
    conn = tasks.redis_settings(settings.redis_url)
    conn.database = db
    redis: ArqRedis = await arq.create_pool(
        conn, job_serializer=tasks.serialize, job_deserializer=tasks.deserialize
    )
    return {
        "redis": redis,
        "settings": settings,
        "ledger": Ledger(redis, result_ttl_s=settings.worker.result_retention_s),
        "http": http,
        "webhook_http": http,
        "adapters": {n: make_adapter(n, p, http) for n, p in settings.providers.items()},
        "hooks": {},
        "clock": ServerClock(redis),
        "job_try": 1,
    }


async def enqueue_jobs(
    ledger: Ledger, n: int, *, callback_url: str | None = None, deadline_s: float = 3600, model: str = MODEL
) -> list[str]:
    now = int(time.time() * 1000)
    jobs = []
    for i in range(n):
        body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": f"question {i}"}]})
        jobs.append(
            NewJob(
                new_job_id(),
                "acme",
                "openai",
                ENDPOINT,
                model,
                body,
                now + int(deadline_s * 1000),
                now,
                callback_url=callback_url,
                tags={"feature": "test"},
            )
        )
    outcomes = await ledger.enqueue_many(jobs)
    assert {o.status for o in outcomes} == {"created"}
    return [j.id for j in jobs]


async def run_batch(ctx: WorkerContext, *, model: str = MODEL) -> str:
    """Reserve the lane's queued jobs into one batch, submit it to the emulator and poll it until it
    ended (a batch that never ends fails the test by its timeout, not by a budget here)."""
    redis = ctx["redis"]
    settings = ctx["settings"]
    await redis.set(keys.LEADER_FENCE, "1")
    lane = effective(settings, "openai", model, ENDPOINT)
    bid = new_batch_id()
    taken = await Batches(redis).reserve(lane, bid, token=1, now_ms=int(time.time() * 1000), chunk=5000)
    assert taken > 0
    assert await submit_batch(ctx, bid) is SubmitOutcome.SUBMITTED
    while await poll_batch(ctx, bid) is not PollOutcome.ENDED:  # noqa: ASYNC110 - the emulator's batch
        await asyncio.sleep(0.05)
    return bid


async def emulator_results(ctx: WorkerContext, bid: str) -> dict[str, Any]:
    """custom_id -> the emulator's own result line, read straight from the adapter."""
    record = await Batches(ctx["redis"]).get(bid)
    assert record is not None
    assert record.provider_batch_id is not None
    adapter = ctx["adapters"][record.provider]
    return {line.custom_id: line async for line in adapter.results(record.provider_batch_id)}


async def dump(redis: Any) -> dict[str, Any]:
    """Every bs:* key's content, with times normalised (two runs differ only in when they ran)."""
    out: dict[str, Any] = {}
    async for raw_key in redis.scan_iter(match=f"{keys.PREFIX}:*", count=1000):
        key = raw_key.decode()
        kind = (await redis.type(raw_key)).decode()
        if kind == "hash":
            h = {k.decode(): v for k, v in (await redis.hgetall(raw_key)).items()}
            if ":slo:" in key:  # buckets are named by time: compare their totals
                totals: dict[str, int] = {}
                for field, v in h.items():
                    suffix = field.split(":")[-1]
                    totals[suffix] = totals.get(suffix, 0) + int(v)
                out[key] = totals
                continue
            out[key] = {
                k: v
                for k, v in h.items()
                if not k.endswith("_ms") and not k.startswith("e2e:") and k != "lease"
            }
        elif kind == "string":
            out[key] = await redis.get(raw_key)
        elif kind == "zset":
            timed = key.endswith(
                (":due", ":deliveries", ":live", ":arrivals", ":ended", ":leases", ":closed")
            )
            members = await redis.zrange(raw_key, 0, -1, withscores=True)
            out[key] = sorted(m for m, _ in members) if timed else sorted(members)
        elif kind == "set":
            out[key] = sorted(await redis.smembers(raw_key))
        elif kind == "list":
            out[key] = await redis.llen(raw_key)  # samples carry times
    return out
