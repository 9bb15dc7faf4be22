"""A batch is polled once more just before its earliest job's last safe moment, so no flip is decided
on stale status: driven through ``Scheduler.tick(now)`` at chosen times on the real Redis.

The provider's answers are recorded as ``poll_batch`` records them (``Batches.update``, guarded by
the batch's state); the worker's own poll is covered by tests/workers/test_batch_tasks.py.
"""

from __future__ import annotations

import pytest
from arq.jobs import Job, JobStatus

from config.settings import SloSettings
from scheduler.ledger import keys, tasks
from scheduler.ledger.ledger import Finish, Ledger
from scheduler.planning.batches import Batches
from scheduler.service import Scheduler, build_scheduler
from tests.conftest import make_settings
from tests.scheduler.slo_support import enqueue, submitted_batch

NOW = 1_800_000_000_000
DEADLINE = NOW + 600_000
# Its last safe moment: the deadline less the 2 s sync margin (1 s default latency × 2 tries), two
# 1 s ticks, and 125 ms on a sync lane of 16 a second (itself, at risk in an overdue batch, and its
# own call); the poll comes 15 s (POLL_LEAD_MIN_S) before it.
LAST_SAFE = DEADLINE - 4_125
PULLED = LAST_SAFE - 15_000


@pytest.fixture
async def late_batch(redis, redis_url, arq_pool):
    """One job due in 10 min in a batch that 400 s in is still running (its prior says 10 s), its next
    poll 5 min later: after the job's last safe moment."""
    settings = make_settings(
        redis_url, slo=SloSettings(prior_turnaround_s=10, default_sync_latency_s=1, sync_retry_allowance=2)
    )
    (job_id,) = await enqueue(Ledger(redis), NOW, [600])
    batch_id = await submitted_batch(redis, settings, NOW)
    await redis.delete(keys.LEADER_LEASE)  # the helper's lease; the scheduler leads from here
    await answered(redis, batch_id, NOW + 400_000, running=True, interval_s=300)
    scheduler = build_scheduler(settings, redis, arq_pool, holder="t")
    yield scheduler, batch_id, job_id
    await scheduler.close()


async def answered(redis, batch_id: str, at_ms: int, *, running: bool, interval_s: float = 0) -> None:
    """Record a poll's answer at ``at_ms`` as ``poll_batch`` does: still running, or ended."""
    batches = Batches(redis)
    if running:
        update = await batches.update(
            batch_id,
            ("submitted",),
            now_ms=at_ms,
            next_poll_ms=at_ms + int(interval_s * 1000),
            poll_interval_s=interval_s,
            running_seen_ms=at_ms,
            status="in_progress",
        )
    else:
        update = await batches.update(
            batch_id,
            ("submitted",),
            now_ms=at_ms,
            to_state="ended",
            next_poll_ms=at_ms + 5_000,
            ended_ms=at_ms - 30_000,
            status="completed",
        )
    assert update.status == "ok"


async def tick(scheduler: Scheduler, at_ms: int):
    return await scheduler.tick(at_ms / 1000)


async def test_the_poll_is_brought_forward_and_enqueued_before_the_last_safe_moment(
    redis, arq_pool, late_batch
):
    scheduler, batch_id, job_id = late_batch
    early = await tick(scheduler, NOW + 500_000)
    assert early.steps["slo"].polls == {batch_id: PULLED}
    assert early.polls == 0  # not due yet
    assert await redis.zscore(keys.BATCHES_POLL, batch_id) == PULLED
    assert (await tick(scheduler, PULLED - 1_000)).steps["slo"].polls == {}  # asked for once
    due = await tick(scheduler, PULLED)
    assert due.polls == 1
    assert await Job(tasks.poll_job_id(batch_id, PULLED), arq_pool).status() == JobStatus.queued
    assert due.steps["slo"].flipped == 0


async def test_a_batch_that_ended_before_the_pulled_poll_keeps_its_job_and_ends_it_by_batch(
    redis, late_batch
):
    """The batch ended between its last poll (400 s) and the job's last safe moment: the pulled poll
    sees it ended, its results are ingested within the lead, and the job, not flipped at its moment,
    ends by batch."""
    scheduler, batch_id, job_id = late_batch
    await tick(scheduler, NOW + 500_000)
    assert (await tick(scheduler, PULLED)).polls == 1
    await answered(redis, batch_id, PULLED + 500, running=False)
    assert (await tick(scheduler, PULLED + 1_000)).steps["slo"].flipped == 0
    ledger = Ledger(redis)
    assert (await ledger.get(job_id)).state == "batched"
    result = Finish(
        job_id, "succeeded", "batch", batch_id=batch_id, result=b"{}", actual_usd=0.5, billed=True
    )
    assert await ledger.finish([result], PULLED + 2_000) == ["ok"]  # as ingest_batch applies it
    for at in (LAST_SAFE - 1_000, LAST_SAFE + 875, LAST_SAFE + 1_875):
        assert (await tick(scheduler, at)).steps["slo"].flipped == 0
    job = await ledger.get(job_id)
    assert job.state == "succeeded"
    assert job.route == "batch"
    assert job.completed_ms is not None
    assert job.completed_ms <= DEADLINE


async def test_a_batch_still_running_at_the_pulled_poll_flips_its_job_at_the_last_safe_moment(
    redis, late_batch
):
    scheduler, batch_id, job_id = late_batch
    await tick(scheduler, NOW + 500_000)
    assert (await tick(scheduler, PULLED)).polls == 1
    await answered(redis, batch_id, PULLED + 500, running=True, interval_s=450)
    before = await tick(scheduler, LAST_SAFE - 125)
    assert before.steps["slo"].flipped == 0
    assert before.steps["slo"].polls == {}  # the status is fresh: no further poll
    at = await tick(scheduler, LAST_SAFE + 875)
    assert at.steps["slo"].flipped == 1
    assert (await Ledger(redis).get(job_id)).state == "sync"


async def test_a_pulled_poll_never_answered_does_not_hold_the_flip(redis, late_batch):
    """The poll is lost (or the provider does not answer): the job flips at its moment all the same."""
    scheduler, batch_id, job_id = late_batch
    await tick(scheduler, NOW + 500_000)
    await tick(scheduler, PULLED)
    assert (await tick(scheduler, LAST_SAFE + 875)).steps["slo"].flipped == 1
    assert (await Ledger(redis).get(job_id)).state == "sync"
