"""The sync lane's first form: run_sync against the emulator, and the tick step that dispatches it under leases."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from config.settings import Settings
from scheduler import keys
from scheduler.ids import job_id as new_job_id
from scheduler.jobs import NewJob
from scheduler.ledger import Ledger
from scheduler.service import Scheduler
from tests.conftest import make_settings
from tests.workers.batch_harness import ENDPOINT, MODEL, make_ctx
from tests.workers.conftest import FAST_HTTP, openai_settings
from workers.emulator.server import EmulatorControl
from workers.http import build_client
from workers.tasks.sync import run_sync
from workers.worker import run_burst


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with build_client(FAST_HTTP) as client:
        yield client


def sync_settings(redis_url: str, url: str) -> Settings:
    return make_settings(redis_url, providers={"openai": openai_settings(url)})


async def sync_job(ledger: Ledger, *, deadline_s: float = 600, content: str = "hello") -> str:
    now = int(time.time() * 1000)
    body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": content}]})
    jid = new_job_id()
    job = NewJob(
        jid, "acme", "openai", ENDPOINT, MODEL, body, now + int(deadline_s * 1000), now, state="sync"
    )
    assert (await ledger.enqueue(job)).status == "created"
    return jid


def sync_calls(emulator: EmulatorControl) -> list[dict[str, Any]]:
    return [r for r in emulator.requests() if r["path"].endswith("/chat/completions")]


async def test_a_sync_job_succeeds_with_the_providers_answer(redis_url, redis, emulator, http) -> None:
    ctx = await make_ctx(sync_settings(redis_url, emulator.url), http)
    jid = await sync_job(ctx["ledger"])
    assert await run_sync(ctx, jid) == "succeeded"
    job = await ctx["ledger"].get(jid)
    assert job.state == "succeeded"
    assert job.route == "sync"
    result = orjson.loads(await ctx["ledger"].result(jid))
    assert result["object"] == "chat.completion"
    assert job.usage == result["usage"]
    assert job.cost["actual_usd"] == job.cost["sync_equivalent_usd"]
    [sample] = await redis.lrange(keys.lane_sync_latencies(job.lane), 0, -1)
    end_ms, seconds = sample.decode().split(":")
    assert int(end_ms) > 0
    assert float(seconds) >= 0
    assert await redis.zscore(keys.SYNC_QUEUE, jid) is None


async def test_a_retriable_error_hands_the_job_back_to_the_dispatch(redis_url, redis, emulator, http) -> None:
    """No arq retry budget: the run moves the job's lease end by the backoff and counts the attempt."""
    emulator.configure(fail_next={"POST /v1/chat/completions": [500]})
    ctx = await make_ctx(sync_settings(redis_url, emulator.url), http)
    jid = await sync_job(ctx["ledger"])
    await redis.zadd(keys.SYNC_LEASES, {jid: 0})
    before = time.time() * 1000
    assert await run_sync(ctx, jid) == "later"
    assert (await ctx["ledger"].get(jid)).state == "sync"
    assert await redis.hget(keys.job(jid), "sync_attempts") == b"1"
    assert await redis.zscore(keys.SYNC_LEASES, jid) > before  # not dispatched again before the backoff
    assert await run_sync(ctx, jid) == "succeeded"


async def test_retriable_errors_retry_past_any_fixed_count_until_the_deadline(
    redis_url, redis, emulator, http
) -> None:
    emulator.configure(fail_next={"POST /v1/chat/completions": [503] * 8})
    ctx = await make_ctx(sync_settings(redis_url, emulator.url), http)
    jid = await sync_job(ctx["ledger"])
    outcomes = [await run_sync(ctx, jid) for _ in range(9)]
    assert outcomes == ["later"] * 8 + ["succeeded"]


async def test_with_an_attempt_cap_the_last_attempt_fails_with_the_providers_error(
    redis_url, redis, emulator, http
) -> None:
    emulator.configure(fail_next={"POST /v1/chat/completions": [503, 503]})
    settings = sync_settings(redis_url, emulator.url)
    settings.worker.sync_max_attempts = 2
    ctx = await make_ctx(settings, http)
    jid = await sync_job(ctx["ledger"])
    assert await run_sync(ctx, jid) == "later"
    assert await run_sync(ctx, jid) == "failed"
    job = await ctx["ledger"].get(jid)
    assert job.error["status"] == 503


async def test_a_permanent_error_fails_the_job_at_once(redis_url, redis, emulator, http) -> None:
    emulator.configure(fail_next={"POST /v1/chat/completions": [400]})
    ctx = await make_ctx(sync_settings(redis_url, emulator.url), http)
    jid = await sync_job(ctx["ledger"])
    assert await run_sync(ctx, jid) == "failed"
    assert (await ctx["ledger"].get(jid)).error["status"] == 400


async def test_a_job_past_its_deadline_fails_without_a_call(redis_url, redis, emulator, http) -> None:
    ctx = await make_ctx(sync_settings(redis_url, emulator.url), http)
    jid = await sync_job(ctx["ledger"], deadline_s=-1)
    assert await run_sync(ctx, jid) == "failed"
    assert (await ctx["ledger"].get(jid)).error["type"] == "deadline_exceeded"
    assert sync_calls(emulator) == []


async def test_a_job_that_left_the_sync_lane_is_not_sent(redis_url, redis, emulator, http) -> None:
    ctx = await make_ctx(sync_settings(redis_url, emulator.url), http)
    jid = await sync_job(ctx["ledger"])
    await ctx["ledger"].cancel(jid, int(time.time() * 1000))
    assert await run_sync(ctx, jid) == "skip:cancelled"
    assert sync_calls(emulator) == []


@pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning")  # arq's Worker.close
async def test_the_tick_dispatches_each_sync_job_once_per_lease_and_the_worker_finishes_it(
    redis_url, redis, emulator, http
) -> None:
    settings = sync_settings(redis_url, emulator.url)
    ctx = await make_ctx(settings, http)
    ids = [await sync_job(ctx["ledger"], content=f"q{i}") for i in range(3)]
    now = time.time()
    async with Scheduler(settings, redis, ctx["redis"]) as scheduler:
        assert (await scheduler.tick(now)).steps["sync"] == 3
        assert (await scheduler.tick(now + 1)).steps["sync"] == 0  # leased
        assert (await scheduler.tick(now + settings.scheduler.sync_lease_s + 1)).steps["sync"] == 3
    # Both dispatches of each job are queued; the superseded ones stop without calling the provider.
    await run_burst(settings)
    for jid in ids:
        assert (await ctx["ledger"].get(jid)).state == "succeeded"
    assert len(sync_calls(emulator)) == 3
