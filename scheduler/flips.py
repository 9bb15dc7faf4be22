"""Flips: jobs at risk of missing their deadline move to the sync lane, and emptied batches are cancelled.

A job is at risk when its predicted completion plus the sync margin passes its deadline. Both
places a job can wait are ordered by deadline, so the at-risk jobs are one range read each: the
lane queue (``keys.lane_queue``, scored by deadline) up to the queue's risk horizon, and, per
batch in flight, a deadline index built once when the tracker first sees the batch
(``keys.batch_deadlines``) up to the batch's horizon. A tick flips at most
``settings.slo.max_flips_per_tick`` jobs; the rest flip next tick, still earliest deadline first.

A flip is the ledger's guarded requeue to ``sync`` (for a batched job, guarded by its batch too),
so a job that finished or moved meanwhile is left alone. Tenants under a ``batch_only`` budget
that is spent do not flip (:func:`scheduler.budgets.sync_blocked`); they count as at risk. When
every job of a batch in flight has flipped, ``cancel_batch`` is enqueued under the batch's
deterministic task id; a result arriving later for a flipped job is skipped by the ledger and
counted as duplicate spend.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import structlog
from arq.connections import ArqRedis
from redis.asyncio import Redis

from config.settings import Settings
from scheduler import budgets, keys, tasks
from scheduler.health import LaneHealth, read_health
from scheduler.jobs import NewJob
from scheduler.ledger import Ledger, Requeue
from scheduler.prediction import LanePrediction

log = structlog.get_logger(__name__)

# Job ids read per round trip when building a batch's deadline index.
INDEX_CHUNK = 1000
# Seconds intake reuses a lane's health: bulk intake reads it once, not once per item.
INTAKE_HEALTH_TTL_S = 1.0


@dataclass(slots=True)
class FlipReport:
    """What flipping did for one lane this tick."""

    flipped: list[str] = field(default_factory=list)
    held: int = 0  # at risk but kept (batch_only budget spent)
    cancelled: list[str] = field(default_factory=list)  # batches whose cancellation was enqueued

    @property
    def at_risk(self) -> int:
        return len(self.flipped) + self.held


async def ensure_deadline_index(redis: Redis, batch_id: str) -> str:
    """The batch's deadline index, built from its job set the first time it is asked for."""
    index = keys.batch_deadlines(batch_id)
    if await redis.exists(index):
        return index
    members = [m.decode() for m in await redis.smembers(keys.batch_jobs(batch_id))]  # type: ignore[misc]
    for start in range(0, len(members), INDEX_CHUNK):
        chunk = members[start : start + INDEX_CHUNK]
        async with redis.pipeline(transaction=False) as pipe:
            for job_id in chunk:
                pipe.hmget(keys.job(job_id), ["deadline_ms", "state", "batch_id"])
            rows = await pipe.execute()
        # Only jobs still waiting on this batch: one cancelled by its producer (or already moved on)
        # is nothing to flip, and must not keep an otherwise empty batch from being cancelled.
        owner = batch_id.encode()
        scored = {
            j: int(d)
            for j, (d, state, b) in zip(chunk, rows, strict=True)
            if state == b"batched" and b == owner
        }
        if scored:
            await redis.zadd(index, scored)
    # An empty batch gets a placeholder-free index: nothing to flip, and no cancel either.
    await redis.expire(index, keys.BATCH_DEADLINES_TTL_S)
    return index


class Flipper:
    """Finds and flips at-risk jobs, one lane at a time, within a per-tick budget."""

    def __init__(self, redis: Redis, pool: ArqRedis, ledger: Ledger, settings: Settings) -> None:
        self.redis = redis
        self.pool = pool
        self.ledger = ledger
        self.settings = settings
        self.remaining = settings.slo.max_flips_per_tick

    def new_tick(self) -> None:
        """Reset the per-tick budget."""
        self.remaining = self.settings.slo.max_flips_per_tick

    async def run(self, prediction: LanePrediction, now_ms: int) -> FlipReport:
        """Flip the lane's at-risk jobs (in flight first: they are nearer their end) and cancel emptied batches."""
        report = FlipReport()
        for batch in prediction.batches:
            # A planned batch is predicted as if submitted now: a submission stuck retrying (the
            # provider refusing creates) must not hold its jobs past their deadlines. Its submit
            # leaves flipped jobs out, and cancels it when none is left; nothing to cancel here.
            planned = batch.batch.submitted_ms is None
            index = await ensure_deadline_index(self.redis, batch.batch.id)
            horizon = prediction.batch_horizon_ms(batch)
            await self._flip_range(index, horizon, batch.batch.id, now_ms, report)
            ended = batch.batch.ended_ms is not None  # nothing left to cancel at the provider
            if (
                not planned
                and not ended
                and await self.redis.zcard(index) == 0
                and await self.redis.exists(keys.batch_jobs(batch.batch.id))
            ):
                await self._cancel(batch.batch.id, prediction.lane, report)
        queue_horizon = prediction.queued_horizon_ms
        if queue_horizon is not None:
            await self._flip_range(keys.lane_queue(prediction.lane), queue_horizon, None, now_ms, report)
        if report.flipped:
            log.info("jobs.flipped", lane=prediction.lane, count=len(report.flipped), held=report.held)
        return report

    async def _flip_range(
        self, zset: str, horizon_ms: int, batch_id: str | None, now_ms: int, report: FlipReport
    ) -> None:
        offset = 0
        while self.remaining > 0:
            page = self.remaining
            ids = [
                i.decode()
                for i in await self.redis.zrangebyscore(
                    zset, "-inf", f"({horizon_ms}", start=offset, num=page
                )
            ]
            if not ids:
                return
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hget(keys.job(job_id), "tenant")
                tenants = [t.decode() if t else "" for t in await pipe.execute()]
            blocked = await budgets.sync_blocked(self.redis, self.settings, tenants, now_ms)
            movable = [j for j, t in zip(ids, tenants, strict=True) if t not in blocked]
            report.held += len(ids) - len(movable)
            offset += len(ids) - len(movable)  # held jobs stay in the range; page past them
            if movable:
                from_states = ("batched",) if batch_id else ("queued",)
                codes = await self.ledger.requeue(
                    [
                        Requeue(j, "sync", from_states=from_states, batch_id=batch_id, attempt=False)
                        for j in movable
                    ],
                    now_ms,
                )
                for job_id, code in zip(movable, codes, strict=True):
                    if code == "ok":
                        report.flipped.append(job_id)
                        log.info("job.flipped", job_id=job_id, lane_batch=batch_id)
                done = sum(1 for c in codes if c == "ok")
                self.remaining -= done
                if batch_id is not None:
                    # Flipped, finished or moved: none of them is this batch's to wait for any more.
                    await self.redis.zrem(zset, *movable)
                else:
                    offset += len(movable) - done  # not flippable (moved meanwhile): page past them
            if len(ids) < page:
                return

    async def _cancel(self, batch_id: str, lane: str, report: FlipReport) -> None:
        enqueued = await tasks.enqueue(
            self.pool, tasks.CANCEL_BATCH, batch_id, job_id=tasks.cancel_job_id(batch_id)
        )
        if enqueued:
            report.cancelled.append(batch_id)
            log.info("batch.cancel_requested", batch_id=batch_id, lane=lane, reason="no_job_waits_on_it")


_intake_health: dict[str, tuple[float, LaneHealth]] = {}


async def route_at_enqueue(job: NewJob, gate: budgets.AdmissionGate) -> None:
    """Intake admission step: a deadline nearer than any batch could meet goes straight to sync.

    "Any batch" is the lane's fastest recent turnaround (none while history is short); the sync
    margin is added because a job that close would be flipped at the first tick anyway.
    A tenant under a spent ``batch_only`` budget stays on the batch lane.
    """
    if job.state != "queued":
        return
    cached = _intake_health.get(job.lane)
    if cached is None or cached[0] < time.monotonic():
        health = await read_health(gate.redis, gate.settings, job.lane, job.provider, job.created_ms)
        if len(_intake_health) > 1000:
            _intake_health.clear()
        _intake_health[job.lane] = (time.monotonic() + INTAKE_HEALTH_TTL_S, health)
    else:
        health = cached[1]
    # Without history nothing says a batch could not make it: only the sync margin counts then.
    fastest = health.turnarounds[0] if health.has_history else 0.0
    if job.deadline_ms - job.created_ms >= (fastest + health.sync_margin()) * 1000:
        return
    if job.tenant in await budgets.sync_blocked(gate.redis, gate.settings, [job.tenant], job.created_ms):
        return
    job.state = "sync"
    log.info("job.routed_to_sync", job_id=job.id, lane=job.lane, reason="deadline_nearer_than_any_batch")
