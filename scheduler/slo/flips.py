"""Flips: jobs whose latest safe moment has come move to the sync lane, and emptied batches are cancelled.

Which jobs flip is :func:`scheduler.flip_plan.plan`, a pure function: per place a job can wait,
a deadline before which its jobs flip now (at their latest safe flip time, or earlier when the
model says their batch will almost surely miss). Both places are ordered by deadline, so the reads
are ranges: the lane queue (``keys.lane_queue``, scored by deadline) and, per batch in flight, a
deadline index (``keys.batch_deadlines``: written as jobs are reserved into the batch, or built
from its job records when the tracker first sees a batch without one); first
the at-risk prefixes that load the sync lane's drain (with the jobs already queued for sync,
``keys.SYNC_QUEUE``), then the flips. A tick flips at most ``settings.slo.max_flips_per_tick``
jobs; the rest flip next tick, still earliest deadline first.

A flip is the ledger's guarded requeue to ``sync`` (for a batched job, guarded by its batch too),
so a job that finished or moved meanwhile is left alone. Tenants under a ``batch_only`` budget
that is spent (:func:`scheduler.budgets.sync_blocked`) do not flip: :func:`scheduler.policy.flip_route`,
the retry rule ingestion and refusals use, keeps them on the lane; they count as at risk. When
every job of a batch in flight has flipped, ``cancel_batch`` is enqueued under the batch's
deterministic task id; a result arriving later for a flipped job is skipped by the ledger and
counted as duplicate spend.

A batch in flight whose next poll falls after its earliest waiting job's latest safe flip time has
that poll brought forward, to just before the moment (:func:`scheduler.flip_plan.pulled_poll_ms`);
the polls step enqueues it when due. A batch that poll sees ended is not flipped at that moment.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from arq.connections import ArqRedis
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from config.settings import Settings
from config.tracing import OFF, Tracing
from scheduler import policy
from scheduler.costs import budgets
from scheduler.costs.admission import AdmissionGate
from scheduler.ledger import keys, scripts, tasks
from scheduler.ledger.jobs import NewJob
from scheduler.ledger.ledger import Ledger, Requeue
from scheduler.planning.batches import Batches
from scheduler.slo import flip_plan
from scheduler.slo.health import LaneHealth, read_health
from scheduler.slo.prediction import LanePrediction

log = structlog.get_logger(__name__)

# Job ids read per round trip when building a batch's deadline index.
INDEX_CHUNK = 1000
# At most this many deadlines are read per place to size the sync lane's drain (a tick's read stays
# bounded; beyond it, a lane's at-risk load is so large that its earliest jobs already flip).
DRAIN_READ_CAP = 100_000
# Seconds intake reuses a lane's health: bulk intake reads it once, not once per item.
INTAKE_HEALTH_TTL_S = 1.0


@dataclass(slots=True)
class FlipReport:
    """What flipping did for one lane this tick."""

    flipped: list[str] = field(default_factory=list)
    held: int = 0  # at risk but kept (batch_only budget spent)
    cancelled: list[str] = field(default_factory=list)  # batches whose cancellation was enqueued
    polls: dict[str, int] = field(default_factory=dict)  # batch id -> its poll brought forward to (ms)

    @property
    def at_risk(self) -> int:
        return len(self.flipped) + self.held


async def ensure_deadline_index(redis: Redis, batch_id: str) -> str:
    """The batch's deadline index; reservation writes it (lib/reserve.lua), and a batch without one
    gets it built from its job set the first time it is asked for.

    Each chunk of ids is read and indexed by one script call (deadline_index.lua), not a pipelined
    read per job: building the index of every new batch was most of the scheduler's CPU per job.
    """
    index = keys.batch_deadlines(batch_id)
    if await redis.exists(index):
        return index
    members = list(await redis.smembers(keys.batch_jobs(batch_id)))  # type: ignore[misc]
    script = scripts.load(redis, "deadline_index")
    for start in range(0, len(members), INDEX_CHUNK):
        # Only jobs still waiting on this batch: one cancelled by its producer (or already moved on)
        # is nothing to flip, and must not keep an otherwise empty batch from being cancelled.
        await script(keys=[index], args=[batch_id, *members[start : start + INDEX_CHUNK]])
    # An empty batch gets a placeholder-free index: nothing to flip, and no cancel either.
    await redis.expire(index, keys.BATCH_DEADLINES_TTL_S)
    return index


def queue_index_reads(pipe: Pipeline, batch_id: str) -> int:
    """Queue on ``pipe`` what the flip step would otherwise read of a batch's deadline index one batch
    at a time (whether it exists, its size, its earliest deadline), so the SLO step reads every
    batch's in its one round trip; returns how many replies :meth:`Flipper.known_index` takes."""
    index = keys.batch_deadlines(batch_id)
    pipe.exists(index)
    pipe.zcard(index)
    pipe.zrange(index, 0, 0, withscores=True)
    return 3


class Flipper:
    """Finds and flips at-risk jobs, one lane at a time, within a per-tick budget."""

    def __init__(
        self, redis: Redis, pool: ArqRedis, ledger: Ledger, settings: Settings, tracing: Tracing = OFF
    ) -> None:
        self.redis = redis
        self.pool = pool
        self.ledger = ledger
        self.tracing = tracing
        self.batches = Batches(redis)
        self.settings = settings
        self.remaining = settings.slo.max_flips_per_tick
        self._sync_deadlines: list[int] | None = None
        # Deadline indexes read this tick (queue_index_reads): index -> (size, earliest deadline).
        self._indexes: dict[str, tuple[int, float]] = {}

    def new_tick(self) -> None:
        """Reset the per-tick budget and the tick's read of the sync queue."""
        self.remaining = self.settings.slo.max_flips_per_tick
        self._sync_deadlines = None
        self._indexes = {}

    def known_index(self, batch_id: str, replies: Sequence[Any]) -> None:
        """Take the replies of :func:`queue_index_reads` for this tick (an index not built yet is
        built by :meth:`run` as before)."""
        exists, size, earliest = replies
        if exists:
            lowest = float(earliest[0][1]) if earliest else float("inf")
            self._indexes[keys.batch_deadlines(batch_id)] = (int(size), lowest)

    async def run(self, prediction: LanePrediction, now_ms: int) -> FlipReport:
        """Flip the lane's jobs whose moment has come (in flight first: they are nearer their end) and
        cancel emptied batches."""
        report = FlipReport()
        policy = flip_plan.Policy.for_settings(self.settings)
        sync = flip_plan.SyncLane(prediction.flip_margin_s, prediction.sync_rate_per_s)
        model = prediction.health.model
        places: list[tuple[flip_plan.Source, str]] = []
        planned: set[str] = set()
        polls: dict[str, flip_plan.PollState] = {}  # batches in flight at the provider
        # The lowest score a place is known to hold (the queue's earliest deadline, read with the
        # prediction; an index's, read by the SLO step): a range ending at or below it is empty, so
        # it is not read.
        floors: dict[str, float] = {}
        for batch in prediction.batches:
            # A planned batch is predicted as if submitted now: a submission stuck retrying (the
            # provider refusing creates) must not hold its jobs past their deadlines.
            start = batch.batch.submitted_ms if batch.batch.submitted_ms is not None else now_ms
            if batch.batch.submitted_ms is None:
                planned.add(batch.batch.id)
            elif batch.batch.next_poll_ms is not None and batch.batch.state == "submitted":
                polls[batch.batch.id] = flip_plan.PollState(
                    batch.batch.submitted_ms,
                    batch.batch.next_poll_ms,
                    batch.batch.running_seen_ms,
                    batch.batch.pulled_poll_ms,
                )
            source = flip_plan.Source(batch.batch.id, start, ended=batch.batch.ended_ms is not None)
            index = keys.batch_deadlines(batch.batch.id)
            known = self._indexes.get(index)
            if known is None:
                index = await ensure_deadline_index(self.redis, batch.batch.id)
            else:
                floors[index] = known[1]
            places.append((source, index))
        if prediction.next_flush_ms is not None:
            queue = keys.lane_queue(prediction.lane)
            places.append((flip_plan.Source(None, prediction.next_flush_ms), queue))
            if prediction.earliest_deadline_ms is not None:
                floors[queue] = prediction.earliest_deadline_ms
        deadlines = []
        for source, zset in places:
            cut = flip_plan.risk_horizon_ms(model, source, now_ms, sync.margin_s, policy)
            floor = floors.get(zset, float("-inf"))
            deadlines.append(await self._deadlines(zset, cut) if cut > floor else [])
        if self._sync_deadlines is None:  # one read per tick, whatever the number of lanes
            self._sync_deadlines = await self._deadlines(keys.SYNC_QUEUE, float("inf"))
        queued_for_sync = self._sync_deadlines
        plan = flip_plan.plan(model, [s for s, _ in places], deadlines, queued_for_sync, sync, policy, now_ms)
        for (source, zset), due in zip(places, deadlines, strict=True):
            horizon = int(min(plan.horizons[source.key], 2**62))
            batch_id = None if source.key is None else str(source.key)
            flipping = horizon > floors.get(zset, float("-inf"))
            if flipping:
                await self._flip_range(zset, horizon, batch_id, now_ms, report)
            # An index that held jobs when read this tick, untouched since, is not empty.
            known = self._indexes.get(zset)
            held = not flipping and known is not None and known[0] > 0
            # A planned batch's submit leaves flipped jobs out, and cancels it when none is left; an
            # ended one has nothing left to cancel at the provider.
            if (
                batch_id is not None
                and batch_id not in planned
                and not source.ended
                and not held
                and await self.redis.zcard(zset) == 0
                and await self.redis.exists(keys.batch_jobs(batch_id))
            ):
                await self._cancel(batch_id, prediction.lane, report)
            if batch_id in polls and not source.ended and batch_id not in report.cancelled:
                # Its earliest job still waiting: the index's, or after flipping, the first of those
                # read that is left (none: the next tick reads the index again).
                first = next((d for d in due if d >= horizon), None) if flipping else floors.get(zset)
                if first is not None and first != float("inf"):
                    flip_ms = plan.first_flip_ms(int(first), batch_id)
                    await self._pull_poll(batch_id, flip_ms, polls[batch_id], now_ms, report)
        if report.flipped:
            log.info("jobs.flipped", lane=prediction.lane, count=len(report.flipped), held=report.held)
        return report

    async def _deadlines(self, zset: str, before_ms: float) -> list[int]:
        """Sorted deadlines (ms) in ``zset`` below ``before_ms``, at most :data:`DRAIN_READ_CAP`."""
        upper = "+inf" if before_ms == float("inf") else f"({int(min(before_ms, 2**62))}"
        rows = await self.redis.zrangebyscore(
            zset, "-inf", upper, start=0, num=DRAIN_READ_CAP, withscores=True
        )
        return [int(score) for _, score in rows]

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
            movable = [
                j for j, t in zip(ids, tenants, strict=True) if policy.flip_route(t not in blocked) == "sync"
            ]
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
                if self.tracing.enabled and done:
                    await self._trace_flips(
                        [j for j, c in zip(movable, codes, strict=True) if c == "ok"], batch_id
                    )
                self.remaining -= done
                if batch_id is not None:
                    # Flipped, finished or moved: none of them is this batch's to wait for any more.
                    await self.redis.zrem(zset, *movable)
                else:
                    offset += len(movable) - done  # not flippable (moved meanwhile): page past them
            if len(ids) < page:
                return

    async def _trace_flips(self, job_ids: list[str], batch_id: str | None) -> None:
        """A ``job.flip`` span in each flipped job's trace (tracing on only: one read per job)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(keys.job(job_id), ["traceparent", "tracestate", "lane"])
            rows = await pipe.execute()
        for job_id, (parent, state, lane) in zip(job_ids, rows, strict=True):
            with self.tracing.span(
                "job.flip",
                parent=parent.decode() if parent else None,
                tracestate=state.decode() if state else None,
                attributes={
                    "batchshift.job_id": job_id,
                    "batchshift.lane": lane.decode() if lane else None,
                    "batchshift.batch_id": batch_id,
                },
            ):
                pass

    async def _pull_poll(
        self, batch_id: str, first_flip_ms: float, polls: flip_plan.PollState, now_ms: int, report: FlipReport
    ) -> None:
        """Bring the batch's next poll forward to just before its earliest job's flip, if it falls after."""
        lead_ms = flip_plan.poll_lead_ms(self.settings.scheduler.tick_interval_s)
        at = flip_plan.pulled_poll_ms(first_flip_ms, polls, now_ms, lead_ms)
        if at is None:
            return
        # Guarded: only a batch still running at the provider is polled; one that ended meanwhile is not.
        moved = await self.batches.update(
            batch_id, ("submitted",), now_ms=now_ms, next_poll_ms=at, pulled_poll_ms=at
        )
        if moved.status == "ok":
            report.polls[batch_id] = at
            log.info("batch.poll_pulled", batch_id=batch_id, due_ms=at, flip_ms=int(first_flip_ms))

    async def _cancel(self, batch_id: str, lane: str, report: FlipReport) -> None:
        enqueued = await tasks.enqueue(
            self.pool, tasks.CANCEL_BATCH, batch_id, job_id=tasks.cancel_job_id(batch_id)
        )
        if enqueued:
            report.cancelled.append(batch_id)
            log.info("batch.cancel_requested", batch_id=batch_id, lane=lane, reason="no_job_waits_on_it")


_intake_health: dict[str, tuple[float, LaneHealth]] = {}


async def route_at_enqueue(job: NewJob, gate: AdmissionGate) -> None:
    """Intake admission check: a deadline nearer than any batch could meet goes straight to sync.

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
    blocked = await budgets.sync_blocked(gate.redis, gate.settings, [job.tenant], job.created_ms)
    if policy.flip_route(job.tenant not in blocked) != "sync":
        return
    job.state = "sync"
    log.info("job.routed_to_sync", job_id=job.id, lane=job.lane, reason="deadline_nearer_than_any_batch")
