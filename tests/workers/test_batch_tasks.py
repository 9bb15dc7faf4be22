"""Batch tasks against the emulator over real HTTP, with burst-mode workers: submit, poll, refusals, crashes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

import pytest
from arq import Retry
from structlog.testing import capture_logs

from config.settings import LaneDefaults, SchedulerSettings, SloSettings
from scheduler.ledger import keys, tasks
from scheduler.ledger.ledger import Ledger
from scheduler.planning.batches import Batches
from scheduler.policy import first_poll_s
from scheduler.service import ReconcileStep, Scheduler, build_scheduler
from tests.conftest import make_settings
from tests.scheduler.planning_support import enqueue_lane
from tests.workers.conftest import anthropic_settings, openai_settings
from workers.context import WorkerContext
from workers.errors import LeaseLost
from workers.providers.base import BatchLine
from workers.tasks.batches import poll_batch, reconcile_batches, submit_batch
from workers.tasks.lease import SubmitLease
from workers.tasks.outcomes import PollOutcome, SubmitOutcome
from workers.tasks.refusals import refuse
from workers.worker import run_burst, shutdown, startup

LANES = {"openai": "openai:gpt-4o-mini:/v1/chat/completions", "anthropic": "anthropic:claude-x:/v1/messages"}
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-x"}
PLANNING_STEPS = ("plan", "polls", "reconcile")


class SimulatedCrash(BaseException):
    """The worker process dying at a hook: not an Exception, so nothing in the task handles it."""


@asynccontextmanager
async def worker_ctx(settings, redis, hooks=None) -> AsyncIterator[WorkerContext]:
    """A worker's ctx built by its own startup, for calling a task directly."""
    ctx = cast(WorkerContext, {"redis": redis, "settings": settings, "hooks": hooks or {}})
    await startup(ctx)
    try:
        yield ctx
    finally:
        await shutdown(ctx)


@pytest.fixture
def task_settings(redis_url: str, emulator):
    return make_settings(
        redis_url,
        providers={"openai": openai_settings(emulator.url), "anthropic": anthropic_settings(emulator.url)},
        scheduler=SchedulerSettings(
            poll_initial_s=0.05,
            poll_max_s=0.2,
            planned_timeout_s=1,
            max_attempts=3,
            token_limit_backoff_s=30,
            submit_lease_s=5,
            create_timeout_s=2,
        ),
        slo=SloSettings(prior_turnaround_s=60),
        lane_defaults=LaneDefaults(max_wait=60),
    )


@pytest.fixture
async def scheduler(task_settings, redis, arq_pool) -> AsyncIterator[Scheduler]:
    async with build_scheduler(task_settings, redis, arq_pool) as s:
        s.steps = [(n, step) for n, step in s.steps if n in PLANNING_STEPS]
        yield s


def reconcile_step(scheduler: Scheduler) -> ReconcileStep:
    """The scheduler's reconcile step (setting its ``last`` to None reconciles at the next tick)."""
    step = dict(scheduler.steps)["reconcile"]
    assert isinstance(step, ReconcileStep)
    return step


def lease_lapsed(settings) -> float:
    """A time (epoch s) past the planned timeout, a dead submission's lease and its create timeout."""
    s = settings.scheduler
    return time.time() + s.planned_timeout_s + s.submit_lease_s + s.create_timeout_s + 1


async def plan(redis, scheduler: Scheduler, provider: str, count: int = 20) -> tuple[list[str], str]:
    """Queue ``count`` jobs that waited past max_wait and tick once: one planned batch."""
    now_ms = int(time.time() * 1000)
    job_ids = await enqueue_lane(
        Ledger(redis),
        provider,
        MODELS[provider],
        count,
        now_ms=now_ms,
        age_ms=61_000,
        deadlines=lambda i: now_ms + 86_400_000,
    )
    report = await scheduler.tick(time.time())
    assert len(report.planned) == 1
    return job_ids, report.planned[0]


async def drive(
    scheduler: Scheduler, settings, batch_id: str, until: tuple[str, ...], rounds: int = 40
) -> str:
    """Alternate scheduler ticks and burst workers until the batch reaches a state in ``until``."""
    batches = Batches(scheduler.redis)
    for _ in range(rounds):
        await scheduler.tick(time.time() + 1)
        await run_burst(settings)
        record = await batches.get(batch_id)
        assert record is not None
        state = record.state
        if state in until:
            return state
        await asyncio.sleep(0.05)
    raise AssertionError(f"batch {batch_id} stuck in {state}")


async def live_batches_of(redis, job_ids: list[str]) -> dict[str, str | None]:
    """Each job's holder: its live batch id, 'lane' when queued, or its terminal state."""
    out: dict[str, str | None] = {}
    for job in await Ledger(redis).get_many(job_ids):
        assert job is not None
        if job.state == "queued":
            assert await redis.zscore(keys.lane_queue(job.lane), job.id) is not None
            out[job.id] = "lane"
        elif job.state == "batched":
            assert job.batch_id is not None
            assert await redis.sismember(keys.batch_jobs(job.batch_id), job.id)
            record = await Batches(redis).get(job.batch_id)
            assert record is not None
            assert record.state in ("planned", "submitted", "ended")
            out[job.id] = job.batch_id
        else:
            out[job.id] = job.state
    return out


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_submit_poll_and_hand_to_ingestion(redis, scheduler, task_settings, emulator, provider) -> None:
    job_ids, batch_id = await plan(redis, scheduler, provider)
    await run_burst(task_settings)
    record = await Batches(redis).get(batch_id)
    assert record is not None
    assert record.state == "submitted"
    assert record.provider_batch_id
    assert await redis.zscore(keys.BATCHES_POLL, batch_id) is not None
    state = await drive(scheduler, task_settings, batch_id, until=("ended", "ingested"))
    ended = await Batches(redis).get(batch_id)
    assert ended is not None
    assert ended.ended_ms is not None
    assert ended.raw["status"] == "completed"
    assert await redis.zscore(keys.BATCHES_POLL, batch_id) is None
    samples = await redis.lrange(keys.lane_turnarounds(LANES[provider]), 0, -1)
    assert len(samples) == 1
    assert float(samples[0].split(b":")[1]) > 0  # on our own clock between polls: never 0
    # ingest_batch (by name) took it from there: every job finished exactly once.
    if state == "ingested":
        jobs = await Ledger(redis).get_many(job_ids)
        assert {j.state for j in jobs if j} == {"succeeded"}


async def test_a_cancelled_batch_teaches_the_lane_no_turnaround(
    redis, scheduler, task_settings, emulator, arq_pool
) -> None:
    """Cancelled, a batch only shows it took at least that long: no sample, or the lane looks fast."""
    emulator.configure(stall=["*"])
    _, batch_id = await plan(redis, scheduler, "openai", 3)
    await run_burst(task_settings)
    await tasks.enqueue(arq_pool, tasks.CANCEL_BATCH, batch_id, job_id=tasks.cancel_job_id(batch_id))
    await drive(scheduler, task_settings, batch_id, until=("ended", "ingested"))
    record = await Batches(redis).get(batch_id)
    assert record is not None
    assert record.raw["status"] == "cancelled"
    assert await redis.llen(keys.lane_turnarounds(LANES["openai"])) == 0


async def test_a_new_batch_is_first_polled_from_its_lanes_turnarounds(
    redis, scheduler, task_settings, emulator
) -> None:
    """With turnaround history the first poll follows it (policy.first_poll_s), not poll_initial_s."""
    emulator.configure(stall=["*"])
    await Batches(redis).push_turnaround(LANES["openai"], int(time.time() * 1000), 0.3, 10)
    _, batch_id = await plan(redis, scheduler, "openai", 3)
    await run_burst(task_settings)
    record = await Batches(redis).get(batch_id)
    assert record is not None
    expected = first_poll_s([0.3], task_settings.scheduler)
    assert expected != task_settings.scheduler.poll_initial_s
    assert record.poll_interval_s == pytest.approx(expected)


async def test_polls_back_off_to_the_cap(redis, scheduler, task_settings, emulator) -> None:
    emulator.configure(stall=["*"])
    _, batch_id = await plan(redis, scheduler, "openai", 3)
    await run_burst(task_settings)
    intervals = []
    for _ in range(5):
        await scheduler.tick(time.time() + 10)
        await run_burst(task_settings)
        record = await Batches(redis).get(batch_id)
        assert record is not None
        intervals.append(record.poll_interval_s)
    assert intervals == pytest.approx([0.075, 0.1125, 0.16875, 0.2, 0.2])


async def test_crash_between_create_and_record_is_healed_by_reconciliation(
    redis, scheduler, task_settings, emulator
) -> None:
    job_ids, batch_id = await plan(redis, scheduler, "openai")

    def crash(**info: object) -> None:
        raise SimulatedCrash(info)

    # The task dies right after the provider accepted the batch, before its id is recorded.
    async with worker_ctx(task_settings, redis, {"after_create": crash}) as ctx:
        with pytest.raises(SimulatedCrash):
            await submit_batch(ctx, batch_id)
    record = await Batches(redis).get(batch_id)
    assert record is not None
    assert record.state == "planned"
    creates = [r for r in emulator.requests() if r["method"] == "POST" and r["path"] == "/v1/batches"]
    assert len(creates) == 1
    # The dead worker's arq job is gone; past the planned timeout the scheduler has a worker
    # reconcile, and the batch is adopted.
    await redis.delete("arq:queue", f"arq:job:submit:{batch_id}:0", "arq:job:reconcile")
    reconcile_step(scheduler).last = None
    await scheduler.tick(lease_lapsed(task_settings))
    await run_burst(task_settings)
    record = await Batches(redis).get(batch_id)
    assert record is not None
    assert record.state == "submitted"
    assert record.raw["submitted_by"] == "adopted"
    holders = await live_batches_of(redis, job_ids)
    assert set(holders.values()) == {batch_id}
    creates = [r for r in emulator.requests() if r["method"] == "POST" and r["path"] == "/v1/batches"]
    assert len(creates) == 1, "the batch was created twice"


CREATE_PATHS = {"openai": "/v1/batches", "anthropic": "/v1/messages/batches"}


async def wait_ended(settings, redis, provider: str, provider_batch_id: str) -> None:
    """Until the emulator's batch has ended (its turnaround is a fraction of a second)."""
    async with worker_ctx(settings, redis) as ctx:
        while not (await ctx["adapters"][provider].get_batch(provider_batch_id)).ended:  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # a batch that never ends fails the test by its timeout


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_rerun_after_a_crash_looks_before_creating_again(
    redis, scheduler, task_settings, emulator, provider
) -> None:
    """arq re-runs a task whose worker died; the re-run adopts the provider batch instead of creating
    another (an Anthropic batch once its results show our job ids: until then nothing is created)."""
    job_ids, batch_id = await plan(redis, scheduler, provider)
    crashed: list[str] = []

    def crash_once(**info: object) -> None:
        if not crashed:
            crashed.append(str(info["provider_batch_id"]))
            raise asyncio.CancelledError  # what arq sees when its worker is torn down mid-task

    if provider == "anthropic":
        emulator.configure(stall=["*"])  # the batch keeps running through the re-run
    await run_burst(task_settings, hooks={"after_create": crash_once})
    record = await Batches(redis).get(batch_id)
    assert record is not None
    assert crashed
    if provider == "anthropic":
        assert record.state == "planned"  # still running: its ids cannot be read yet
        emulator.configure(stall=[])
        await wait_ended(task_settings, redis, provider, crashed[0])
        reconcile_step(scheduler).last = None
        await scheduler.tick(lease_lapsed(task_settings))
        await run_burst(task_settings)
        record = await Batches(redis).get(batch_id)
        assert record is not None
    assert record.state == "submitted"
    assert record.provider_batch_id == crashed[0]
    creates = [
        r for r in emulator.requests() if r["method"] == "POST" and r["path"] == CREATE_PATHS[provider]
    ]
    assert len(creates) == 1
    assert set((await live_batches_of(redis, job_ids)).values()) == {batch_id}


async def test_unknown_create_outcome_is_reconciled_not_resent(
    redis, scheduler, task_settings, emulator
) -> None:
    """A 500 on create may hide a batch: the task stops; reconciliation resubmits only if none exists."""
    emulator.configure(fail_next={"POST /v1/batches": [500]})
    job_ids, batch_id = await plan(redis, scheduler, "openai")
    await run_burst(task_settings)
    record = await Batches(redis).get(batch_id)
    assert record is not None
    assert record.state == "planned"
    reconcile_step(scheduler).last = None
    await scheduler.tick(time.time() + task_settings.scheduler.planned_timeout_s + 0.5)
    await run_burst(task_settings)  # the create may still answer: reconciliation waits for its timeout
    record = await Batches(redis).get(batch_id)
    assert record is not None
    assert record.state == "planned"
    assert record.attempts == 0
    reconcile_step(scheduler).last = None
    await scheduler.tick(lease_lapsed(task_settings))
    await run_burst(task_settings)  # reconcile finds nothing -> resubmits (attempt 1) -> created
    record = await Batches(redis).get(batch_id)
    assert record is not None
    assert record.state == "submitted"
    assert record.attempts == 1
    assert set((await live_batches_of(redis, job_ids)).values()) == {batch_id}


async def test_a_second_provider_batch_is_recorded_as_a_duplicate(
    redis, scheduler, task_settings, emulator
) -> None:
    job_ids, batch_id = await plan(redis, scheduler, "openai")
    await run_burst(task_settings)
    record = await Batches(redis).get(batch_id)
    assert record is not None
    # A second create of the same batch happened (e.g. an unknown outcome that did succeed).
    async with worker_ctx(task_settings, redis) as ctx:
        jobs = await Ledger(redis).get_many(job_ids)
        lines = [BatchLine(custom_id=j.id, body=j.body) for j in jobs if j]
        second = await ctx["adapters"]["openai"].submit_batch(
            lines, endpoint=record.endpoint, batch_id=batch_id
        )
        counts = await reconcile_batches(ctx, int(time.time() * 1000))
    assert counts["duplicates"] == 1
    duplicate_id = (await Batches(redis).claimed("openai"))[second.provider_batch_id]
    duplicate = await Batches(redis).get(duplicate_id)
    assert duplicate is not None
    assert duplicate.duplicate_of == batch_id
    assert duplicate.owner_id == batch_id
    assert duplicate.state == "submitted"
    assert await redis.zscore(keys.BATCHES_POLL, duplicate_id) is not None


async def test_refused_batch_fails_its_jobs_with_the_reason(
    redis, scheduler, task_settings, emulator
) -> None:
    """OpenAI `failed` at validation (a permanent refusal): every job fails with the provider's reason."""
    emulator.configure(invalid_file=True)
    job_ids, batch_id = await plan(redis, scheduler, "openai", 5)
    await run_burst(task_settings)
    assert await drive(scheduler, task_settings, batch_id, until=("failed",)) == "failed"
    jobs = await Ledger(redis).get_many(job_ids)
    assert {j.state for j in jobs if j} == {"failed"}
    assert all(j.error and j.error["code"] == "invalid_file" for j in jobs if j)
    assert await redis.zscore(keys.BATCHES_FAILED, batch_id) is not None


async def test_anthropic_4xx_on_create_fails_its_jobs(redis, scheduler, task_settings, emulator) -> None:
    emulator.configure(fail_next={"POST /v1/messages/batches": [400]})
    job_ids, batch_id = await plan(redis, scheduler, "anthropic", 4)
    await run_burst(task_settings)
    record = await Batches(redis).get(batch_id)
    assert record is not None
    assert record.state == "failed"
    jobs = await Ledger(redis).get_many(job_ids)
    assert {j.state for j in jobs if j} == {"failed"}
    assert all(j.error and j.error["type"] == "batch_refused" for j in jobs if j)


async def test_retriable_refusal_sends_jobs_back_and_backs_the_lane_off(
    redis, scheduler, task_settings, emulator
) -> None:
    """A token-limit refusal: jobs return to their lane with an attempt counted; the lane holds."""
    job_ids, batch_id = await plan(redis, scheduler, "openai", 6)
    await run_burst(task_settings)
    record = await Batches(redis).get(batch_id)
    assert record is not None
    async with worker_ctx(task_settings, redis) as ctx:
        reason = {
            "type": "batch_refused",
            "code": "token_limit_exceeded",
            "message": "Enqueued token limit reached",
        }
        now_ms = int(time.time() * 1000)
        assert await refuse(ctx, Batches(redis), record, reason, retriable=True, now_ms=now_ms) == (6, 0)
        # Running it again changes nothing: the jobs are no longer in this batch.
        assert await refuse(ctx, Batches(redis), record, reason, retriable=True, now_ms=now_ms) == (0, 0)
    jobs = await Ledger(redis).get_many(job_ids)
    assert {(j.state, j.attempts) for j in jobs if j} == {("queued", 1)}
    assert set((await live_batches_of(redis, job_ids)).values()) == {"lane"}
    report = await scheduler.tick(time.time())
    assert report.decisions[LANES["openai"]].reason == "backoff"
    assert (await Batches(redis).get(batch_id)).state == "failed"  # type: ignore[union-attr]


async def test_retriable_refusal_with_attempts_spent_sends_jobs_on_to_sync(
    redis, scheduler, task_settings, emulator
) -> None:
    """A "not now" after the last batch attempt: the sync API can still meet the deadline."""
    job_ids, batch_id = await plan(redis, scheduler, "openai", 3)
    for job_id in job_ids:
        await redis.hset(keys.job(job_id), "attempts", task_settings.scheduler.max_attempts - 1)
    record = await Batches(redis).get(batch_id)
    assert record is not None
    async with worker_ctx(task_settings, redis) as ctx:
        reason = {"type": "batch_refused", "code": "server_error", "message": "try later"}
        await refuse(ctx, Batches(redis), record, reason, retriable=True, now_ms=int(time.time() * 1000))
    jobs = await Ledger(redis).get_many(job_ids)
    assert {j.state for j in jobs if j} == {"sync"}
    for job_id in job_ids:
        assert await redis.zscore(keys.SYNC_QUEUE, job_id) is not None


async def test_a_batch_the_provider_lost_is_abandoned_and_its_jobs_go_back(
    redis, scheduler, task_settings, emulator
) -> None:
    job_ids, batch_id = await plan(redis, scheduler, "openai", 4)
    emulator.configure(stall=["*"])
    await run_burst(task_settings)  # submitted
    assert (await Batches(redis).get(batch_id)).state == "submitted"  # type: ignore[union-attr]
    emulator.reset()  # the provider no longer knows the batch: 404 on every poll
    async with worker_ctx(task_settings, redis) as ctx:
        assert await poll_batch(ctx, batch_id) is PollOutcome.ABANDONED
    assert (await Batches(redis).get(batch_id)).state == "failed"  # type: ignore[union-attr]
    jobs = await Ledger(redis).get_many(job_ids)
    assert {(j.state, j.attempts) for j in jobs if j} == {("queued", 1)}


async def test_a_batch_running_past_its_window_is_cancelled_and_its_jobs_go_back(
    redis, redis_url, emulator, arq_pool
) -> None:
    """A provider that never expires a batch (Azure Global Batch): the poll gives up on it."""
    settings = make_settings(
        redis_url,
        providers={"openai": openai_settings(emulator.url).model_copy(update={"completion_window_s": 0.2})},
        scheduler=SchedulerSettings(poll_initial_s=0.05, poll_max_s=0.2, overdue_grace_s=0),
        slo=SloSettings(prior_turnaround_s=60),
        lane_defaults=LaneDefaults(max_wait=60),
    )
    emulator.configure(stall=["*"])
    async with build_scheduler(settings, redis, arq_pool) as s:
        s.steps = [(n, step) for n, step in s.steps if n in PLANNING_STEPS]
        job_ids, batch_id = await plan(redis, s, "openai", 3)
    await run_burst(settings)  # submitted
    await asyncio.sleep(0.3)
    async with worker_ctx(settings, redis) as ctx:
        assert await poll_batch(ctx, batch_id) is PollOutcome.ABANDONED
    cancels = [r for r in emulator.requests() if r["path"].endswith("/cancel")]
    assert len(cancels) == 1
    jobs = await Ledger(redis).get_many(job_ids)
    assert {j.state for j in jobs if j} == {"queued"}


def creates_accepted(emulator, path: str = "/v1/batches") -> int:
    """Provider batches the emulator created (create calls it answered 200)."""
    return sum(
        1 for r in emulator.requests() if r["method"] == "POST" and r["path"] == path and r["status"] == 200
    )


STORMS = {
    "openai": {
        "POST /v1/files": [429, 500, 503, 429, 500, 429, 503, 500],  # two whole arq tries
        "POST /v1/batches": [429, 429, 429, 429, 500],  # a third try refused, then an unknown outcome
    },
    # Anthropic's create carries the upload: two tries refused, a third, then an unknown outcome.
    "anthropic": {"POST /v1/messages/batches": [429, 529, 429, 529] * 3 + [500]},
}


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_storm_longer_than_three_planned_timeouts_creates_the_batch_once(
    redis, scheduler, task_settings, emulator, provider
) -> None:
    """429/5xx on uploads and creates while reconciliation runs at 1, 2 and 3 x planned_timeout_s:
    one provider batch for the planned batch, and every job succeeds."""
    settings = task_settings.model_copy(
        update={"scheduler": task_settings.scheduler.model_copy(update={"submit_lease_s": 60})}
    )
    timeout_ms = int(settings.scheduler.planned_timeout_s * 1000)
    emulator.configure(fail_next=STORMS[provider])
    job_ids, batch_id = await plan(redis, scheduler, provider)
    passes: list[tuple[int, dict[str, int]]] = []
    async with worker_ctx(settings, redis) as rctx:

        async def reconcile_mid_submission(**info: object) -> None:
            """Reconciliation passes while the submission is at work, up to 3 x planned_timeout_s on."""
            planned_ms = int(await redis.zscore(keys.BATCHES_PLANNED, batch_id))
            for k in (1, 2, 3):
                passes.append((k, await reconcile_batches(rctx, planned_ms + k * timeout_ms + 1)))

        hooks = {"submit_retry": reconcile_mid_submission, "before_create": reconcile_mid_submission}
        for _ in range(6):
            await run_burst(settings, hooks=hooks)
            record = await Batches(redis).get(batch_id)
            assert record is not None
            if record.state != "planned":
                break
            # The submission gave up or its create's outcome is unknown: past the create timeout,
            # the scheduler's reconciliation looks for the batch and resubmits it.
            reconcile_step(scheduler).last = None
            s = settings.scheduler
            since = max(time.time(), await redis.zscore(keys.BATCHES_PLANNED, batch_id) / 1000)
            await scheduler.tick(since + s.planned_timeout_s + s.create_timeout_s + 1)
    assert record.state == "submitted"
    assert {k for k, _ in passes} == {1, 2, 3}
    assert all(p["resubmitted"] == 0 and p["adopted"] == 0 and p["leased"] == 1 for _, p in passes)
    assert len(await ctx_list_batches(settings, redis, provider)) == 1
    await drive(scheduler, settings, batch_id, until=("ingested",))
    assert creates_accepted(emulator, CREATE_PATHS[provider]) == 1
    jobs = await Ledger(redis).get_many(job_ids)
    assert {j.state for j in jobs if j} == {"succeeded"}


async def ctx_list_batches(settings, redis, provider: str) -> list[object]:
    async with worker_ctx(settings, redis) as ctx:
        return list(await ctx["adapters"][provider].list_batches(100))


async def test_a_submission_that_lost_its_lease_does_not_create(
    redis, scheduler, task_settings, emulator
) -> None:
    """A stale submission (its lease lapsed and taken over while it waited) stops before creating."""
    _, batch_id = await plan(redis, scheduler, "openai")
    batches = Batches(redis)

    async def taken_over(**info: object) -> None:
        # The lease lapses (a frozen worker) and a reconciliation takes the batch for another task.
        await redis.hset(keys.batch(batch_id), "lease_until_ms", 0)
        other = SubmitLease(batches, task_settings, batch_id, "submit:other")
        assert await other.acquire(int(time.time() * 1000)) == "ok"

    async with worker_ctx(task_settings, redis, {"submit_retry": taken_over}) as ctx:
        emulator.configure(fail_next={"POST /v1/files": [429] * 4})
        with pytest.raises(Retry):
            await submit_batch(ctx, batch_id)
        ctx["job_try"] = 2
        with capture_logs() as logs:
            assert await submit_batch(ctx, batch_id) is SubmitOutcome.LEASED
    [summary] = [e for e in logs if e["event"] == "task.finished"]
    assert summary["lease"] == "held:submit:other"
    assert creates_accepted(emulator) == 0
    # Had it got past the start, the stamp before the create call would have stopped it.
    mine = SubmitLease(batches, task_settings, batch_id, f"submit:{batch_id}:0")
    with pytest.raises(LeaseLost):
        await mine.before_create()


async def test_the_heartbeat_renews_the_lease_while_a_submission_works(
    redis, scheduler, task_settings
) -> None:
    _, batch_id = await plan(redis, scheduler, "openai")
    settings = task_settings.model_copy(
        update={"scheduler": task_settings.scheduler.model_copy(update={"submit_lease_s": 0.03})}
    )
    lease = SubmitLease(Batches(redis), settings, batch_id, "submit:x:0")
    assert await lease.acquire(int(time.time() * 1000)) == "ok"
    first = int(await redis.hget(keys.batch(batch_id), "lease_until_ms"))
    async with lease.heartbeat():
        # Waits for the renewal itself, however slow the machine (the test timeout bounds it).
        while int(await redis.hget(keys.batch(batch_id), "lease_until_ms")) <= first:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert int(await redis.hget(keys.batch(batch_id), "lease_until_ms")) > first
    assert await redis.hget(keys.batch(batch_id), "lease_holder") == b"submit:x:0"


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_foreign_batch_of_the_same_time_size_and_model_is_never_adopted(
    redis, scheduler, task_settings, emulator, provider
) -> None:
    """Our create's outcome is unknown; meanwhile another client of the account created a batch of
    the same model and size (on OpenAI even tagged with our id): it is not ours, so it is never
    adopted, and our batch is created once, by resubmission."""
    job_ids, batch_id = await plan(redis, scheduler, provider)
    emulator.configure(fail_next={f"POST {CREATE_PATHS[provider]}": [500]})
    await run_burst(task_settings)
    record = await Batches(redis).get(batch_id)
    assert record is not None
    assert record.state == "planned"
    assert record.raw.get("create_started_ms")
    jobs = await Ledger(redis).get_many(job_ids)
    foreign_lines = [BatchLine(custom_id=f"foreign-{i}", body=j.body) for i, j in enumerate(jobs) if j]
    emulator.configure(stall=["*"])  # the foreign batch runs until we say
    async with worker_ctx(task_settings, redis) as ctx:
        foreign = await ctx["adapters"][provider].submit_batch(
            foreign_lines, endpoint=record.endpoint, batch_id=batch_id
        )
    assert foreign.created_at is not None
    assert abs(foreign.created_at * 1000 - int(record.raw["create_started_ms"])) < 5_000
    if provider == "anthropic":
        # Running, its ids unreadable: neither adopted nor created over.
        reconcile_step(scheduler).last = None
        await scheduler.tick(lease_lapsed(task_settings))
        await run_burst(task_settings)
        record = await Batches(redis).get(batch_id)
        assert record is not None
        assert record.state == "planned"
        assert creates_accepted(emulator, CREATE_PATHS[provider]) == 1  # the foreign one
        emulator.configure(stall=[])
        await wait_ended(task_settings, redis, provider, foreign.provider_batch_id)
    emulator.configure(stall=[])
    reconcile_step(scheduler).last = None
    await scheduler.tick(lease_lapsed(task_settings))
    await run_burst(task_settings)  # reconcile: the candidate is foreign -> resubmit -> created
    record = await Batches(redis).get(batch_id)
    assert record is not None
    assert record.state == "submitted"
    assert record.provider_batch_id != foreign.provider_batch_id
    assert record.raw["submitted_by"] == "created"
    assert creates_accepted(emulator, CREATE_PATHS[provider]) == 2  # the foreign one and ours
    assert (
        await Batches(redis).claimed(provider) == {record.provider_batch_id: batch_id} or provider == "openai"
    )
    await drive(scheduler, task_settings, batch_id, until=("ingested",))
    done = await Ledger(redis).get_many(job_ids)
    assert {j.state for j in done if j} == {"succeeded"}


async def test_a_job_stranded_batched_is_swept_within_one_reconcile_interval(
    redis, scheduler, task_settings, emulator
) -> None:
    """A batch closed with jobs still ``batched`` in it: the next reconcile pass sends them back."""
    job_ids, batch_id = await plan(redis, scheduler, "openai", 6)
    await run_burst(task_settings)  # submitted; the first reconcile pass ran and found nothing
    batches = Batches(redis)
    # A closing step that forgot its jobs (the bug this guards against): nothing else would move them.
    moved = await batches.update(
        batch_id, ("submitted",), now_ms=int(time.time() * 1000), to_state="ingested"
    )
    assert moved.status == "ok"
    assert {j.state for j in await Ledger(redis).get_many(job_ids) if j} == {"batched"}
    assert await redis.zscore(keys.BATCHES_CLOSED, batch_id) is not None
    # One reconcile interval later the scheduler's reconcile pass runs, and a worker sweeps.
    last = reconcile_step(scheduler).last
    assert last is not None
    report = await scheduler.tick(last + task_settings.scheduler.reconcile_interval_s)
    assert report.reconcile
    await run_burst(task_settings)
    assert set((await live_batches_of(redis, job_ids)).values()) == {"lane"}
    assert await redis.zscore(keys.BATCHES_CLOSED, batch_id) is None


async def test_sweeping_sends_a_job_without_room_for_another_batch_to_sync(
    redis, scheduler, task_settings, emulator
) -> None:
    job_ids, batch_id = await plan(redis, scheduler, "openai", 3)
    for job_id in job_ids:  # attempts spent: no further batch for them
        await redis.hset(keys.job(job_id), "attempts", task_settings.scheduler.max_attempts)
    await Batches(redis).update(batch_id, ("planned",), now_ms=int(time.time() * 1000), to_state="failed")
    async with worker_ctx(task_settings, redis) as ctx:
        counts = await reconcile_batches(ctx, int(time.time() * 1000))
    assert counts["stranded"] == 3
    assert {j.state for j in await Ledger(redis).get_many(job_ids) if j} == {"sync"}


async def test_a_foreign_result_file_of_our_size_does_not_answer_our_jobs(
    redis, scheduler, task_settings, emulator
) -> None:
    """Ingestion decides "fully answered" by our job ids: a foreign batch recorded as ours (the
    old matching bug) leaves our jobs unanswered, and they go back to their lane."""
    job_ids, batch_id = await plan(redis, scheduler, "openai", 8)
    record = await Batches(redis).get(batch_id)
    assert record is not None
    jobs = await Ledger(redis).get_many(job_ids)
    lines = [BatchLine(custom_id=f"foreign-{i}", body=j.body) for i, j in enumerate(jobs) if j]
    async with worker_ctx(task_settings, redis) as ctx:
        foreign = await ctx["adapters"]["openai"].submit_batch(lines, endpoint=record.endpoint, batch_id="x")
        outcome = await Batches(redis).mark_submitted(
            batch_id,
            "openai",
            foreign.provider_batch_id,
            now_ms=int(time.time() * 1000),
            poll_s=0.05,
            how="adopted",
        )
        assert outcome == "ok"
    await drive(scheduler, task_settings, batch_id, until=("ingested",))
    ingested = await Batches(redis).get(batch_id)
    assert ingested is not None
    assert int(ingested.raw["ingest_unanswered"]) == 8
    holders = await live_batches_of(redis, job_ids)
    assert batch_id not in holders.values()


async def test_jobs_of_a_batch_whose_record_is_missing_are_swept(
    redis, scheduler, task_settings, emulator
) -> None:
    job_ids, batch_id = await plan(redis, scheduler, "openai", 4)
    await run_burst(task_settings)
    assert await redis.zscore(keys.BATCHES_LIVE, batch_id) is not None
    await redis.delete(keys.batch(batch_id))  # the record lost (say a bad restore); its jobs say batched
    async with worker_ctx(task_settings, redis) as ctx:
        counts = await reconcile_batches(ctx, int(time.time() * 1000))
    assert counts["stranded"] == 4
    assert set((await live_batches_of(redis, job_ids)).values()) == {"lane"}
    assert await redis.zscore(keys.BATCHES_LIVE, batch_id) is None
    assert await redis.zscore(keys.BATCHES_POLL, batch_id) is None


async def test_an_ingested_anthropic_batch_is_deleted_with_its_results(
    redis, scheduler, task_settings, emulator
) -> None:
    job_ids, batch_id = await plan(redis, scheduler, "anthropic", 5)
    await drive(scheduler, task_settings, batch_id, until=("ingested",))
    assert {j.state for j in await Ledger(redis).get_many(job_ids) if j} == {"succeeded"}
    record = await Batches(redis).get(batch_id)
    assert record is not None
    assert record.raw["results_batch_id"] == record.provider_batch_id
    assert await ctx_list_batches(task_settings, redis, "anthropic") == []
    deletes = [r for r in emulator.requests() if r["method"] == "DELETE"]
    assert [(r["path"], r["status"]) for r in deletes] == [
        (f"/v1/messages/batches/{record.provider_batch_id}", 200)
    ]


async def test_a_lane_hold_ends_by_the_ticks_clock_not_by_key_expiry(redis, scheduler: Scheduler):
    """A refusal's lane hold outlives its length in real time while the tick's clock stands still,
    and ends when that clock reaches it."""
    now_ms = int(time.time() * 1000)
    await enqueue_lane(
        Ledger(redis),
        "openai",
        MODELS["openai"],
        5,
        now_ms=now_ms,
        age_ms=61_000,
        deadlines=lambda i: now_ms + 86_400_000,
    )
    await Batches(redis).hold_lane(LANES["openai"], now_ms + 50, now_ms)
    await asyncio.sleep(0.2)  # four times the hold, in real time only
    assert (await scheduler.tick(now_ms / 1000)).planned == []
    assert len((await scheduler.tick((now_ms + 50) / 1000)).planned) == 1
