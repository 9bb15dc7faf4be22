"""Ingestion of emulator batches: results written exactly, failures routed, skips counted, resumable, retention."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from config.settings import (
    SchedulerSettings,
    Settings,
    SloSettings,
    TenantSettings,
    WebhookSettings,
    WorkerSettings,
)
from emulator.server import EmulatorControl
from scheduler.ledger import keys
from scheduler.planning.batches import Batches
from tests.conftest import make_settings
from tests.workers.batch_harness import MODEL, dump, emulator_results, enqueue_jobs, make_ctx, run_batch
from tests.workers.conftest import FAST_HTTP, openai_settings
from tests.workers.receiver import running_receiver
from workers.http import build_client
from workers.tasks.ingest import ingest_batch
from workers.webhooks import Deliverer
from workers.webhooks import build_client as webhook_client

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class Killed(BaseException):
    """A worker dying mid-task: not an Exception, so nothing in the task catches it."""


def ingest_settings(redis_url: str, url: str, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "providers": {"openai": openai_settings(url)},
        "worker": WorkerSettings(ingest_chunk=10),
        "slo": SloSettings(prior_turnaround_s=1.0),
        "scheduler": SchedulerSettings(max_attempts=3),
        "webhook_allowlist": ["127.0.0.0/8"],
        "webhooks": WebhookSettings(retry_schedule_s=[1], jitter=0),
        "tenants": {"acme": TenantSettings(api_key="acme-key", webhook_secrets=[SECRET])},
    }
    base.update(overrides)
    return make_settings(redis_url, **base)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with build_client(FAST_HTTP) as client:
        yield client


async def states(redis: Redis, ids: list[str]) -> dict[str, str]:
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(keys.job(job_id), "state")
        rows = await pipe.execute()
    return {i: r.decode() for i, r in zip(ids, rows, strict=True)}


async def test_results_are_written_exactly_as_the_emulator_produced_them(
    redis_url, redis, emulator: EmulatorControl, http
) -> None:
    ctx = await make_ctx(ingest_settings(redis_url, emulator.url), http)
    ids = await enqueue_jobs(ctx["ledger"], 35)
    bid = await run_batch(ctx)
    produced = await emulator_results(ctx, bid)
    totals = await ingest_batch(ctx, bid)
    assert totals["succeeded"] == 35
    for job_id in ids:
        job = await ctx["ledger"].get(job_id)
        assert job.state == "succeeded"
        assert job.route == "batch"
        assert await ctx["ledger"].result(job_id) == produced[job_id].body
        assert job.usage == produced[job_id].usage
        assert job.cost["actual_usd"] < job.cost["sync_equivalent_usd"]
    batch = await Batches(redis).get(bid)
    assert batch is not None
    assert batch.state == "ingested"
    assert batch.raw["ingest_succeeded"] == "35"
    assert await redis.exists(keys.batch_cursor(bid)) == 0


async def test_permanent_line_errors_fail_their_jobs_with_the_providers_error(
    redis_url, redis, emulator: EmulatorControl, http
) -> None:
    emulator.configure(line_error_rate=0.4, line_error_status=400)
    ctx = await make_ctx(ingest_settings(redis_url, emulator.url), http)
    ids = await enqueue_jobs(ctx["ledger"], 30)
    bid = await run_batch(ctx)
    produced = await emulator_results(ctx, bid)
    await ingest_batch(ctx, bid)
    failed = [i for i in ids if produced[i].outcome == "failed"]
    assert failed
    for job_id in ids:
        job = await ctx["ledger"].get(job_id)
        if job_id in failed:
            assert job.state == "failed"
            assert job.error == produced[job_id].error
        else:
            assert job.state == "succeeded"


async def test_retriable_lines_go_back_to_the_lane_with_the_attempt_counted(
    redis_url, redis, emulator: EmulatorControl, http
) -> None:
    emulator.configure(line_error_rate=0.5, line_error_status=500)
    ctx = await make_ctx(ingest_settings(redis_url, emulator.url), http)
    ids = await enqueue_jobs(ctx["ledger"], 30)
    bid = await run_batch(ctx)
    produced = await emulator_results(ctx, bid)
    totals = await ingest_batch(ctx, bid)
    retried = [i for i in ids if produced[i].outcome == "retriable"]
    assert retried
    assert totals["requeued"] == len(retried)
    for job_id in retried:
        job = await ctx["ledger"].get(job_id)
        assert job.state == "queued"
        assert job.attempts == 1
        assert await redis.zscore(keys.lane_queue(job.lane), job_id) is not None


async def test_retriable_lines_go_to_sync_when_attempts_or_the_deadline_run_out(
    redis_url, redis, emulator: EmulatorControl, http
) -> None:
    emulator.configure(line_error_rate=0.5, line_error_status=503)
    settings = ingest_settings(redis_url, emulator.url, scheduler=SchedulerSettings(max_attempts=1))
    ctx = await make_ctx(settings, http)
    ids = await enqueue_jobs(ctx["ledger"], 20)
    bid = await run_batch(ctx)
    produced = await emulator_results(ctx, bid)
    await ingest_batch(ctx, bid)
    retried = [i for i in ids if produced[i].outcome == "retriable"]
    assert retried
    assert set((await states(redis, retried)).values()) == {"sync"}
    assert set(m.decode() for m in await redis.zrange(keys.SYNC_QUEUE, 0, -1)) == set(retried)


async def test_a_batch_only_tenant_past_its_budget_is_not_sent_to_paid_sync(
    redis_url, redis, emulator: EmulatorControl, http
) -> None:
    """Its batch attempts used up and paid sync barred, a retriable line fails the job with a clear
    error (scheduler.policy.route_retry), instead of sending it round the lane without end."""
    emulator.configure(line_error_rate=0.5, line_error_status=503)
    tenants = {
        "acme": TenantSettings(
            api_key="acme-key", webhook_secrets=[SECRET], monthly_budget_usd=1, budget_policy="batch_only"
        )
    }
    settings = ingest_settings(
        redis_url, emulator.url, scheduler=SchedulerSettings(max_attempts=1), tenants=tenants
    )
    ctx = await make_ctx(settings, http)
    ids = await enqueue_jobs(ctx["ledger"], 20)
    bid = await run_batch(ctx)
    produced = await emulator_results(ctx, bid)
    await redis.set(keys.budget_spend("acme", time.strftime("%Y-%m", time.gmtime())), "5")
    await ingest_batch(ctx, bid)
    retried = [i for i in ids if produced[i].outcome == "retriable"]
    assert retried
    assert set((await states(redis, retried)).values()) == {"failed"}
    for job_id in retried:
        job = await ctx["ledger"].get(job_id)
        assert job.error["code"] == "sync_blocked"
        assert job.error["cause"] == produced[job_id].error
    assert await redis.zcard(keys.SYNC_QUEUE) == 0


async def test_a_batch_only_tenant_past_its_budget_with_attempts_left_goes_back_to_its_lane(
    redis_url, redis, emulator: EmulatorControl, http
) -> None:
    emulator.configure(line_error_rate=0.5, line_error_status=503)
    tenants = {
        "acme": TenantSettings(
            api_key="acme-key", webhook_secrets=[SECRET], monthly_budget_usd=1, budget_policy="batch_only"
        )
    }
    ctx = await make_ctx(ingest_settings(redis_url, emulator.url, tenants=tenants), http)
    ids = await enqueue_jobs(ctx["ledger"], 20)
    bid = await run_batch(ctx)
    produced = await emulator_results(ctx, bid)
    await redis.set(keys.budget_spend("acme", time.strftime("%Y-%m", time.gmtime())), "5")
    await ingest_batch(ctx, bid)
    retried = [i for i in ids if produced[i].outcome == "retriable"]
    assert retried
    assert set((await states(redis, retried)).values()) == {"queued"}
    assert await redis.zcard(keys.SYNC_QUEUE) == 0


async def test_expired_batch_applies_its_partial_results_and_requeues_the_rest(
    redis_url, redis, emulator: EmulatorControl, http
) -> None:
    emulator.configure(expire={"*": 0.5})
    ctx = await make_ctx(ingest_settings(redis_url, emulator.url), http)
    ids = await enqueue_jobs(ctx["ledger"], 20)
    bid = await run_batch(ctx)
    await ingest_batch(ctx, bid)
    by_state = await states(redis, ids)
    assert list(by_state.values()).count("succeeded") == 10
    assert list(by_state.values()).count("queued") == 10


async def test_a_result_for_a_job_no_longer_in_the_batch_changes_nothing_and_is_counted(
    redis_url, redis, emulator: EmulatorControl, http
) -> None:
    ctx = await make_ctx(ingest_settings(redis_url, emulator.url), http)
    ids = await enqueue_jobs(ctx["ledger"], 10)
    bid = await run_batch(ctx)
    await ctx["ledger"].cancel(ids[0], 0)
    await ingest_batch(ctx, bid)
    job = await ctx["ledger"].get(ids[0])
    assert job.state == "cancelled"
    assert await ctx["ledger"].result(ids[0]) is None
    batch = await Batches(redis).get(bid)
    assert batch is not None
    assert batch.raw["ingest_skipped"] == "1"
    assert batch.raw["ingest_succeeded"] == "9"


async def test_jobs_without_a_result_line_go_back_to_their_lane(
    redis_url, redis, emulator: EmulatorControl, http
) -> None:
    ctx = await make_ctx(ingest_settings(redis_url, emulator.url), http)
    ids = await enqueue_jobs(ctx["ledger"], 5)
    bid = await run_batch(ctx)
    # A job the provider never answered for: in the batch, but not in its input.
    [stray] = await enqueue_jobs(ctx["ledger"], 1)
    lane = (await ctx["ledger"].get(stray)).lane
    await redis.zrem(keys.lane_queue(lane), stray)
    await redis.hset(keys.job(stray), mapping={"state": "batched", "batch_id": bid})
    await redis.sadd(keys.batch_jobs(bid), stray)
    totals = await ingest_batch(ctx, bid)
    assert totals["unanswered"] == 1
    assert (await states(redis, [stray]))[stray] == "queued"
    assert set((await states(redis, ids)).values()) == {"succeeded"}


async def test_results_the_provider_will_not_give_send_the_jobs_back_and_fail_the_batch(
    redis_url, redis, emulator: EmulatorControl, http
) -> None:
    """The provider forgot the batch (404, permanent): no job may stay batched forever."""
    ctx = await make_ctx(ingest_settings(redis_url, emulator.url), http)
    ids = await enqueue_jobs(ctx["ledger"], 4)
    bid = await run_batch(ctx)
    emulator.reset()
    totals = await ingest_batch(ctx, bid)
    assert totals == {"unanswered": 4}
    assert set((await states(redis, ids)).values()) == {"queued"}
    record = await Batches(redis).get(bid)
    assert record is not None
    assert record.state == "failed"
    assert await redis.zscore(keys.BATCHES_LIVE, bid) is None


async def test_a_second_run_after_ingestion_changes_nothing(
    redis_url, redis, emulator: EmulatorControl, http
) -> None:
    ctx = await make_ctx(ingest_settings(redis_url, emulator.url), http)
    await enqueue_jobs(ctx["ledger"], 12)
    bid = await run_batch(ctx)
    await ingest_batch(ctx, bid)
    before = await dump(redis)
    assert await ingest_batch(ctx, bid) == {}
    assert await dump(redis) == before


async def test_killed_halfway_and_run_again_the_ledger_equals_an_uninterrupted_run(
    redis_url, redis, emulator: EmulatorControl, http
) -> None:
    """Same emulator batch ingested twice: uninterrupted in DB 1, killed after chunk 2 and resumed in DB 0."""
    emulator.configure(line_error_rate=0.3, line_error_status=500)
    with running_receiver(secrets=(SECRET,)) as rx:
        # The one provider batch is read by both runs: its files stay at the emulator in between.
        provider = openai_settings(emulator.url, delete_output_files=False)
        settings = ingest_settings(redis_url, emulator.url, providers={"openai": provider})
        ctx = await make_ctx(settings, http)
        ids = await enqueue_jobs(ctx["ledger"], 45, callback_url=rx.url)
        bid = await run_batch(ctx)
        await ctx["ledger"].cancel(ids[-1], 0)  # one skipped, billed line: counted once as duplicate spend
        other = await make_ctx(settings, http, db=1)
        await other["redis"].flushdb()
        async for key in redis.scan_iter(count=1000):
            await other["redis"].restore(key, 0, await redis.dump(key))

        await ingest_batch(other, bid)
        expected = await dump(other["redis"])
        await other["redis"].flushdb()

        def die_after_second_chunk(*, chunk: int, **_: Any) -> None:
            if chunk == 2:
                raise Killed

        ctx["hooks"]["ingest_after_chunk"] = die_after_second_chunk
        with pytest.raises(Killed):
            await ingest_batch(ctx, bid)
        assert int(await redis.get(keys.batch_cursor(bid))) == 20
        ctx["hooks"].clear()
        await ingest_batch(ctx, bid)
        resumed = await dump(redis)
        # The outcome counters on the batch record are the only figures that may differ after a
        # real crash (see ingest.py); with the hook they are exact too.
        assert resumed == expected

        async with webhook_client(settings) as client:
            await Deliverer(settings, redis, client).run()
    terminal = [i for i, s in (await states(redis, ids)).items() if s in ("succeeded", "failed", "cancelled")]
    ids_seen: dict[str, set[str]] = {}
    for req in rx.requests:
        job_id = orjson.loads(req.body)["data"]["id"]
        ids_seen.setdefault(job_id, set()).add(req.headers["webhook-id"])
    assert set(ids_seen) == set(terminal)
    assert all(seen == {f"msg_{j}"} for j, seen in ids_seen.items())
    assert all(r.verified for r in rx.requests)


async def test_an_expired_result_leaves_status_usage_and_cost(
    redis_url, redis, emulator: EmulatorControl, http
) -> None:
    settings = ingest_settings(
        redis_url, emulator.url, worker=WorkerSettings(ingest_chunk=10, result_retention_s=1)
    )
    ctx = await make_ctx(settings, http)
    [job_id] = await enqueue_jobs(ctx["ledger"], 1)
    bid = await run_batch(ctx)
    await ingest_batch(ctx, bid)
    assert await ctx["ledger"].result(job_id) is not None
    assert 0 < await redis.pttl(keys.result(job_id)) <= 1000
    await asyncio.sleep(1.1)
    assert await ctx["ledger"].result(job_id) is None
    job = await ctx["ledger"].get(job_id)
    assert job.state == "succeeded"
    assert job.usage is not None
    assert job.cost is not None
    assert job.view(None)["result"] is None


@pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning")  # arq's Worker.close
async def test_5000_jobs_end_succeeded_through_faulty_emulator_batches(
    redis_url, redis, emulator: EmulatorControl, http
) -> None:
    """Out-of-order results, retriable line errors, an expired and a cancelled batch: all end succeeded.

    The cancelled batch is one of ``MODEL``'s, whose batches the emulator holds stalled until the cancel
    has reached it: otherwise a slow machine lets the batch complete before the cancel arrives.
    """
    from config.settings import LaneSettings
    from scheduler.ledger import tasks
    from scheduler.ledger.tasks import create_pool
    from scheduler.service import build_scheduler
    from workers.worker import run_burst

    expiring = "gpt-4.1-mini"
    emulator.configure(
        turnaround_s=0.5, line_error_rate=0.05, line_error_status=500, expire={expiring: 0.5}, stall=[MODEL]
    )
    settings = ingest_settings(
        redis_url,
        emulator.url,
        worker=WorkerSettings(ingest_chunk=500),
        scheduler=SchedulerSettings(max_attempts=5, poll_initial_s=0.1, poll_max_s=0.2, poll_backoff=1),
        lane_defaults={"max_wait": 0, "max_batch_requests": 1000},
        slo=SloSettings(prior_turnaround_s=1.0),
        # The results are read again below, after ingestion: keep the output files.
        providers={"openai": openai_settings(emulator.url, delete_output_files=False)},
    )
    assert isinstance(settings.lane_settings("x"), LaneSettings)
    ctx = await make_ctx(settings, http)
    ids = await enqueue_jobs(ctx["ledger"], 4000) + await enqueue_jobs(ctx["ledger"], 1000, model=expiring)
    # An ended job drops its request body (retention): keep what was sent, to ask the sync API again.
    sent = {r.id: r.body for r in await ctx["ledger"].get_many(ids) if r is not None}
    pool = await create_pool(redis_url)
    cancelled = None
    stalled = True
    deadline = asyncio.get_running_loop().time() + 100
    async with build_scheduler(settings, redis, pool) as scheduler:
        while True:
            await scheduler.tick(time.time())
            await run_burst(settings)
            if cancelled is None:
                submitted = [
                    b.decode()
                    for b in await redis.zrange(keys.BATCHES_POLL, 0, -1)
                    if (await redis.hget(keys.batch(b.decode()), "state")) == b"submitted"
                    and (await redis.hget(keys.batch(b.decode()), "model")) != expiring.encode()
                ]
                if submitted:
                    cancelled = submitted[0]
                    await tasks.enqueue(
                        pool, tasks.CANCEL_BATCH, cancelled, job_id=tasks.cancel_job_id(cancelled)
                    )
            if stalled and cancelled and await redis.hexists(keys.batch(cancelled), "cancel_requested_ms"):
                emulator.configure(stall=[])  # the cancel reached the emulator: the rest may complete
                stalled = False
            counts = Counter((await states(redis, ids)).values())
            if counts["succeeded"] == len(ids):
                break
            if cancelled and await redis.hget(keys.batch(cancelled), "state") == b"ingested":
                emulator.configure(line_error_rate=0.0, expire={})  # the resubmissions come back whole
            assert asyncio.get_running_loop().time() < deadline, counts
            await asyncio.sleep(0.05)
    await pool.aclose()
    # Every result is what the emulator produced for that job: byte for byte the line of the batch
    # that answered it (or of a duplicate provider batch of it, applied under its id); a job the SLO
    # tracker flipped to sync holds the emulator's sync answer, the same response but for its time.
    batch_keys = [k.decode() for k in await redis.keys(keys.batch("*"))]
    batches = [await Batches(redis).get(k.split(":")[2]) for k in batch_keys if k.count(":") == 2]
    answers: dict[tuple[str, str], set[bytes | None]] = {}
    for b in batches:
        if b is None or b.provider_batch_id is None:
            continue
        for custom_id, line in (await emulator_results(ctx, b.id)).items():
            if line.outcome == "succeeded":
                answers.setdefault((b.owner_id, custom_id), set()).add(line.body)

    def timeless(body: bytes | None) -> dict[str, Any]:
        doc = orjson.loads(body or b"{}")
        doc.pop("created", None)
        return dict(doc)

    for job_id in ids:
        job = await ctx["ledger"].get(job_id)
        got = await ctx["ledger"].result(job_id)
        if job.route == "batch":
            assert got in answers[(job.batch_id, job_id)]
        else:
            again = await ctx["adapters"]["openai"].send_sync(job.endpoint, sent[job_id])
            assert timeless(got) == timeless(again.body)
    ended = {b.raw.get("status") for b in batches if b is not None}
    assert {"completed", "expired", "cancelled"} <= ended
    assert (await Batches(redis).get(cancelled)).raw.get("status") == "cancelled"
