"""The sync lane's first form: run_sync against the emulator, and the tick step that dispatches it under leases."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest

from config.settings import SchedulerSettings, Settings
from emulator.server import EmulatorControl
from scheduler.costs import reports as costs
from scheduler.ledger import keys
from scheduler.ledger.clock import ManualClock, server_ms
from scheduler.ledger.ids import job_id as new_job_id
from scheduler.ledger.jobs import NewJob
from scheduler.ledger.ledger import Ledger
from scheduler.service import build_scheduler
from tests.conftest import make_settings
from tests.workers.batch_harness import ENDPOINT, MODEL, make_ctx
from tests.workers.conftest import FAST_HTTP, openai_settings
from workers.http import build_client
from workers.tasks.outcomes import SyncOutcome
from workers.tasks.sync import expected_usd, run_sync
from workers.worker import SYNC_TASK_MARGIN_S, functions, run_burst


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
    assert await run_sync(ctx, jid) is SyncOutcome.SUCCEEDED
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
    assert await run_sync(ctx, jid) is SyncOutcome.DEFERRED
    assert (await ctx["ledger"].get(jid)).state == "sync"
    assert await redis.hget(keys.job(jid), "sync_attempts") == b"1"
    assert await redis.zscore(keys.SYNC_LEASES, jid) > before  # not dispatched again before the backoff
    assert await run_sync(ctx, jid) is SyncOutcome.SUCCEEDED


async def test_retriable_errors_retry_past_any_fixed_count_until_the_deadline(
    redis_url, redis, emulator, http
) -> None:
    emulator.configure(fail_next={"POST /v1/chat/completions": [503] * 8})
    ctx = await make_ctx(sync_settings(redis_url, emulator.url), http)
    jid = await sync_job(ctx["ledger"])
    outcomes = [await run_sync(ctx, jid) for _ in range(9)]
    assert outcomes == [SyncOutcome.DEFERRED] * 8 + [SyncOutcome.SUCCEEDED]


async def test_with_an_attempt_cap_the_last_attempt_fails_with_the_providers_error(
    redis_url, redis, emulator, http
) -> None:
    emulator.configure(fail_next={"POST /v1/chat/completions": [503, 503]})
    settings = sync_settings(redis_url, emulator.url)
    settings.worker.sync_max_attempts = 2
    ctx = await make_ctx(settings, http)
    jid = await sync_job(ctx["ledger"])
    assert await run_sync(ctx, jid) is SyncOutcome.DEFERRED
    assert await run_sync(ctx, jid) is SyncOutcome.FAILED
    job = await ctx["ledger"].get(jid)
    assert job.error["status"] == 503


async def test_a_permanent_error_fails_the_job_at_once(redis_url, redis, emulator, http) -> None:
    emulator.configure(fail_next={"POST /v1/chat/completions": [400]})
    ctx = await make_ctx(sync_settings(redis_url, emulator.url), http)
    jid = await sync_job(ctx["ledger"])
    assert await run_sync(ctx, jid) is SyncOutcome.FAILED
    assert (await ctx["ledger"].get(jid)).error["status"] == 400


async def test_a_job_past_its_deadline_fails_without_a_call(redis_url, redis, emulator, http) -> None:
    ctx = await make_ctx(sync_settings(redis_url, emulator.url), http)
    jid = await sync_job(ctx["ledger"], deadline_s=-1)
    assert await run_sync(ctx, jid) is SyncOutcome.FAILED
    assert (await ctx["ledger"].get(jid)).error["type"] == "deadline_exceeded"
    assert sync_calls(emulator) == []


async def test_a_job_that_left_the_sync_lane_is_not_sent(redis_url, redis, emulator, http) -> None:
    ctx = await make_ctx(sync_settings(redis_url, emulator.url), http)
    jid = await sync_job(ctx["ledger"])
    await ctx["ledger"].cancel(jid, int(time.time() * 1000))
    assert await run_sync(ctx, jid) is SyncOutcome.SKIPPED
    assert sync_calls(emulator) == []


@pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning")  # arq's Worker.close
async def test_the_tick_dispatches_each_sync_job_once_per_lease_and_the_worker_finishes_it(
    redis_url, redis, emulator, http
) -> None:
    settings = sync_settings(redis_url, emulator.url)
    ctx = await make_ctx(settings, http)
    ids = [await sync_job(ctx["ledger"], content=f"q{i}") for i in range(3)]
    now = time.time()
    async with build_scheduler(settings, redis, ctx["redis"]) as scheduler:
        assert (await scheduler.tick(now)).steps["sync"] == 3
        assert (await scheduler.tick(now + 1)).steps["sync"] == 0  # leased
        assert (await scheduler.tick(now + settings.scheduler.sync_lease_s + 1)).steps["sync"] == 3
    # Both dispatches of each job are queued; the superseded ones stop without calling the provider.
    await run_burst(settings)
    for jid in ids:
        assert (await ctx["ledger"].get(jid)).state == "succeeded"
    assert len(sync_calls(emulator)) == 3


# -- long calls: a timeout of their own, a heartbeat on the lease, possibly billed tries counted --------


def long_call_settings(redis_url: str, url: str, *, lease_s: float, **provider: object) -> Settings:
    return make_settings(
        redis_url,
        providers={"openai": openai_settings(url, **provider)},
        scheduler=SchedulerSettings(sync_lease_s=lease_s),
    )


async def spend(redis, now_ms: int | None = None) -> dict[str, Any]:
    """Today's cost totals (the day of ``now_ms``, default the Redis server's), as /v1/costs reports them."""
    today = datetime.fromtimestamp((now_ms or await server_ms(redis)) / 1000, tz=UTC)
    return (await costs.report(redis, "route", costs.period(None, None, today)))["total"]


async def until(condition: Callable[[], Awaitable[bool]]) -> None:
    """Wait for a condition the test does not control the timing of (bounded by the test timeout)."""
    while not await condition():  # noqa: ASYNC110 - the state is outside this process (emulator, Redis's clock)
        await asyncio.sleep(0.05)


async def test_a_call_longer_than_the_lease_is_not_dispatched_again_and_is_paid_once(
    redis_url, redis, emulator, http
) -> None:
    """The heartbeat keeps the lease (and the call's concurrency slot) ahead of the call: ticks during
    a call held for four leases of the shared virtual clock hand nothing out again."""
    lease_s = 1.0
    settings = long_call_settings(redis_url, emulator.url, lease_s=lease_s)
    ctx = await make_ctx(settings, http)
    clock = ctx["clock"] = ManualClock(int(time.time() * 1000))
    jid = await sync_job(ctx["ledger"])
    emulator.configure(hold_sync=True)  # the call is answered only when the test lets it go
    async with build_scheduler(settings, redis, ctx["redis"]) as scheduler:
        assert (await scheduler.tick(clock.seconds)).steps["sync"] == 1
        run = asyncio.create_task(run_sync(ctx, jid, 1))

        async def call_arrived() -> bool:
            return len(sync_calls(emulator)) == 1

        async def beaten_since_the_step() -> bool:
            """A heartbeat since the clock's last step has moved the lease a whole lease past it."""
            return await redis.zscore(keys.SYNC_LEASES, jid) == clock.ms + int(lease_s * 1000)

        await until(call_arrived)
        redispatched, slot_lapsed = 0, False
        for _ in range(8):  # half a lease a step: without beats the lease lapses at the second
            clock.advance(lease_s / 2)
            await until(beaten_since_the_step)
            redispatched += (await scheduler.tick(clock.seconds)).steps["sync"]
            slots = await redis.zrange(keys.sync_slots("openai"), 0, -1, withscores=True)
            slot_lapsed |= any(lapses <= clock.ms for _, lapses in slots)  # the slot lives with the lease
        assert not run.done()
        emulator.configure(hold_sync=False)
        assert await run is SyncOutcome.SUCCEEDED
        assert redispatched == 0
        assert not slot_lapsed
        assert await redis.zcard(keys.sync_slots("openai")) == 0  # released at the end
    job = await ctx["ledger"].get(jid)
    assert job.state == "succeeded"
    assert len(sync_calls(emulator)) == 1
    total = await spend(redis, clock.ms)
    assert total["actual_usd"] == pytest.approx(job.cost["actual_usd"])
    assert total["wasted_usd"] == 0
    assert total["duplicate_usd"] == 0


async def test_a_worker_killed_mid_call_leads_to_one_more_call_and_both_are_counted(
    redis_url, redis, emulator, http
) -> None:
    emulator.configure(sync_latency_s=3.0)
    settings = long_call_settings(redis_url, emulator.url, lease_s=0.5)
    ctx = await make_ctx(settings, http)
    jid = await sync_job(ctx["ledger"], content="a long answer")
    async with build_scheduler(settings, redis, ctx["redis"]) as scheduler:
        assert (await scheduler.tick(time.time())).steps["sync"] == 1
        killed = asyncio.create_task(run_sync(ctx, jid, 1))

        async def call_arrived() -> bool:
            return len(sync_calls(emulator)) == 1

        await until(call_arrived)
        killed.cancel()  # the worker dies mid-call: no answer, no heartbeat any more
        with pytest.raises(asyncio.CancelledError):
            await killed
        emulator.configure(sync_latency_s=0.0)

        async def lease_lapsed() -> bool:
            return await redis.zscore(keys.SYNC_LEASES, jid) < await server_ms(redis)

        await until(lease_lapsed)
        assert (await scheduler.tick(time.time())).steps["sync"] == 1
    # Priced while the job still holds its body (an ended job's body is dropped).
    expected = expected_usd(settings, "openai", await ctx["ledger"].get(jid), "sync")
    assert expected > 0
    assert await run_sync(ctx, jid, 2) is SyncOutcome.SUCCEEDED
    job = await ctx["ledger"].get(jid)
    assert job.state == "succeeded"
    assert len(sync_calls(emulator)) == 2
    total = await spend(redis)
    assert total["actual_usd"] == pytest.approx(job.cost["actual_usd"])  # the answered call
    assert total["wasted_usd"] == pytest.approx(expected)  # the killed one, at its expected price


async def test_a_flex_call_that_times_out_falls_back_to_standard_and_is_counted(
    redis_url, redis, emulator, http
) -> None:
    emulator.configure(flex_latency_s=2.0)
    settings = long_call_settings(redis_url, emulator.url, lease_s=30, flex=True, flex_latency_s=0.3)
    ctx = await make_ctx(settings, http)
    jid = await sync_job(ctx["ledger"])
    expected = expected_usd(settings, "openai", await ctx["ledger"].get(jid), "flex")  # body still held
    assert expected > 0
    assert await run_sync(ctx, jid) is SyncOutcome.SUCCEEDED
    job = await ctx["ledger"].get(jid)
    assert job.route == "sync"
    assert [r.get("service_tier") for r in sync_calls(emulator)] == ["flex", "auto"]
    total = await spend(redis)
    assert total["wasted_usd"] == pytest.approx(expected)
    assert total["actual_usd"] == pytest.approx(job.cost["actual_usd"])


async def test_a_standard_call_waits_for_its_own_timeout_and_a_timed_out_try_is_counted(
    redis_url, redis, emulator, http
) -> None:
    """A call longer than the provider's read timeout is answered; one past sync_timeout_s is
    retried later, and its try counts as wasted spend when the job finishes."""
    emulator.configure(sync_latency_s=0.6)
    settings = long_call_settings(
        redis_url, emulator.url, lease_s=30, http=FAST_HTTP.model_copy(update={"read_timeout": 0.2})
    )
    settings.worker.sync_timeout_s = 5
    ctx = await make_ctx(settings, http)
    first = await sync_job(ctx["ledger"])
    assert await run_sync(ctx, first) is SyncOutcome.SUCCEEDED  # past the provider's 0.2 s read timeout
    settings.worker.sync_timeout_s = 0.2
    second = await sync_job(ctx["ledger"], content="slow")
    await redis.zadd(keys.SYNC_LEASES, {second: 0})
    assert await run_sync(ctx, second) is SyncOutcome.DEFERRED
    assert await redis.hget(keys.job(second), "sync_call") is None
    emulator.configure(sync_latency_s=0.0)
    expected = expected_usd(settings, "openai", await ctx["ledger"].get(second), "sync")  # body still held
    assert expected > 0
    assert await run_sync(ctx, second) is SyncOutcome.SUCCEEDED
    jobs = [await ctx["ledger"].get(j) for j in (first, second)]
    total = await spend(redis)
    assert total["wasted_usd"] == pytest.approx(expected)
    assert total["actual_usd"] == pytest.approx(sum(j.cost["actual_usd"] for j in jobs))
    assert len(sync_calls(emulator)) == 3


def test_run_sync_may_run_as_long_as_its_calls() -> None:
    settings = make_settings(
        "redis://localhost:6379/0",
        providers={"openai": openai_settings("http://x", flex=True, flex_latency_s=120)},
    )
    [run] = [f for f in functions(settings) if f.name == "run_sync"]
    assert run.timeout_s == 120 + settings.worker.sync_timeout_s + SYNC_TASK_MARGIN_S
    assert run.timeout_s > settings.worker.job_timeout_s


async def test_a_worker_60s_ahead_stamps_the_lease_by_the_servers_clock(
    redis_url, redis, emulator, http, monkeypatch
) -> None:
    """A retry hands the job back for its backoff by Redis's clock: a worker 60 s ahead would
    otherwise hold the job a minute longer than the backoff."""
    emulator.configure(fail_next={"POST /v1/chat/completions": [500]})
    ctx = await make_ctx(sync_settings(redis_url, emulator.url), http)
    jid = await sync_job(ctx["ledger"])
    await redis.zadd(keys.SYNC_LEASES, {jid: 0})
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 60)
    assert await run_sync(ctx, jid) is SyncOutcome.DEFERRED
    lease_end = await redis.zscore(keys.SYNC_LEASES, jid)
    assert lease_end < await server_ms(redis) + 30_000  # the backoff is well under a second


async def test_a_deposed_leaders_sync_dispatch_hands_nothing_out(redis_url, redis, emulator, http) -> None:
    settings = sync_settings(redis_url, emulator.url)
    ctx = await make_ctx(settings, http)
    jid = await sync_job(ctx["ledger"])
    async with (
        build_scheduler(settings, redis, ctx["redis"], holder="a") as a,
        build_scheduler(settings, redis, ctx["redis"], holder="b") as b,
    ):
        a.steps = [(name, step) for name, step in a.steps if name == "sync"]
        token = await a.leader.ensure()
        assert token is not None
        await redis.delete(keys.LEADER_LEASE)  # a's lease ran out while it was paused
        assert await b.leader.ensure() is not None
        late = await a.act(time.time(), token)
        assert late.fenced
        assert "sync" not in late.steps
        assert await redis.zscore(keys.SYNC_LEASES, jid) is None
        assert await redis.hget(keys.SYNC_DISPATCHES, jid) is None
        b.steps = [(name, step) for name, step in b.steps if name == "sync"]
        assert (await b.tick(time.time())).steps["sync"] == 1
