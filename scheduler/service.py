"""The scheduler: a tick loop under the leader lease that plans batches and hands I/O to workers.

``tick(now)`` is a function of Redis state and the clock: it takes or renews the lease, then runs
:attr:`Scheduler.steps` in order, each a coroutine ``step(tick) -> None`` that records what it did
on ``tick.report``. Add a step with one line in ``__init__`` (e.g. ``("webhooks", dispatch_webhooks)``).
``run_forever()`` only alternates ``tick(clock())`` and waiting for the tick interval or a wake-up
(a job enqueued pushes to ``keys.WAKEUP``).

Steps here: ``plan`` (flush decisions over the active lanes, their state read in one pipelined
round trip, reservation into planned batches, ``submit_batch``), ``lanes`` (prune idle empty lanes),
``polls`` (``poll_batch`` for every batch whose next poll is due), ``reconcile`` (at start and
every ``reconcile_interval_s``, the ``reconcile_batches`` task for stale planned batches, pending
provider file deletions and jobs stranded ``batched`` in closed batches) and ``retention`` (on the
same interval, scheduler/retention.py trims what retention allows).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import structlog
from arq.connections import ArqRedis
from redis.asyncio import Redis
from redis.exceptions import RedisError

from config.settings import Settings
from scheduler import ids, keys, tasks
from scheduler.batches import Batches
from scheduler.clock import Clock, ServerClock
from scheduler.errors import Fenced
from scheduler.heartbeat import heartbeat
from scheduler.lanes import Lane, adopt_registry, load_lanes, prune
from scheduler.leader import Leader, holder_id
from scheduler.planner import Decision, LaneState, band_limit_ms, decide, pressure_horizon_ms
from scheduler.retention import RetentionStep
from scheduler.slo import SloTracker
from scheduler.store import blocking_wait_s
from scheduler.sync_dispatch import dispatch_sync
from scheduler.webhook_dispatch import dispatch_webhooks

log = structlog.get_logger(__name__)


@dataclass
class TickReport:
    """What one tick did."""

    now: float
    leader: bool = False
    token: int | None = None
    fenced: bool = False  # the fencing token was refused mid-tick: we are not the leader any more
    decisions: dict[str, Decision] = field(default_factory=dict)  # lane -> flush decision
    planned: list[str] = field(default_factory=list)  # batch ids planned this tick
    reserved: int = 0  # jobs moved from lanes into planned batches
    submits: int = 0  # submit_batch tasks enqueued
    polls: int = 0  # poll_batch tasks enqueued
    reconcile: bool = False  # the reconcile_batches task was enqueued
    steps: dict[str, Any] = field(default_factory=dict)  # other steps' summaries, by step name
    errors: dict[str, str] = field(default_factory=dict)  # step name -> error, for steps that failed


@dataclass
class Tick:
    """One tick's inputs, handed to every step."""

    scheduler: Scheduler
    now: float
    now_ms: int
    token: int
    report: TickReport


Step = Callable[[Tick], Awaitable[None]]
TurnaroundEstimator = Callable[[Lane, float], Awaitable[float]]


class Scheduler:
    """The tick loop. ``async with Scheduler(settings, redis, arq_pool) as s: await s.run_forever()``."""

    def __init__(
        self, settings: Settings, redis: Redis, arq_pool: ArqRedis, *, holder: str | None = None
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.arq = arq_pool
        self.batches = Batches(redis)
        self.leader = Leader(redis, holder=holder or holder_id(), ttl_s=settings.scheduler.lease_ttl_s)
        # The expected batch turnaround of a lane, for deadline pressure; the SLO tracker may replace it.
        self.turnaround: TurnaroundEstimator = self.median_turnaround
        self.steps: list[tuple[str, Step]] = [
            ("plan", plan_step),
            ("polls", polls_step),
            ("reconcile", reconcile_step),
            ("retention", RetentionStep()),
            ("sync", dispatch_sync),
            ("webhooks", dispatch_webhooks),
            ("lanes", prune_step),
        ]
        self.slo = SloTracker(self)  # inserts the "slo" step first and supplies self.turnaround
        self.last_reconcile: float | None = None  # None: reconcile at the first tick we lead
        # The lease is renewed within a tick once this much of its TTL has passed (monotonic clock,
        # replaceable in tests), so a long tick never outlives it; ``lanes_adopted``: the lane
        # registry was marked active this term (data from before keys.LANES_ACTIVE).
        self.monotonic: Callable[[], float] = time.monotonic
        self.renewed_at = 0.0
        self.lanes_adopted = False
        self._stopping = False

    async def __aenter__(self) -> Scheduler:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the loop and hand the lease over."""
        self._stopping = True
        try:
            await self.leader.release()
        except (RedisError, OSError):
            log.warning("scheduler.release_failed")  # the lease lapses by itself after its TTL

    async def tick(self, now: float) -> TickReport:
        """Take or renew the lease, then, as leader, run every step at ``now`` (epoch seconds)."""
        token = await self.leader.ensure()
        if token is None:
            self.last_reconcile = None
            self.lanes_adopted = False
            return TickReport(now=now)
        self.renewed_at = self.monotonic()
        return await self.act(now, token)

    async def keep_lease(self, token: int) -> None:
        """Renew the lease mid-tick once a third of its TTL has passed; raise Fenced if it was lost."""
        if self.leader.token != token:  # the heartbeat found it lost
            raise Fenced(token)
        if self.monotonic() - self.renewed_at < self.leader.ttl_ms / 3000:
            return
        self.renewed_at = self.monotonic()
        if await self.leader.ensure() != token:
            raise Fenced(token)

    async def act(self, now: float, token: int) -> TickReport:
        """Run the steps with ``token``; a step's fenced write stops the tick (we no longer lead)."""
        report = TickReport(now=now, leader=True, token=token)
        tick = Tick(self, now, int(now * 1000), token, report)

        async def renew() -> bool:
            """Renew the lease every third of its TTL however long one step takes; between steps
            :meth:`keep_lease` checks the outcome, and a lost lease stops the tick fenced."""
            try:
                await self.keep_lease(token)
            except Fenced:
                return False
            return True

        async with heartbeat(renew, self.leader.ttl_ms / 3000, name="leader"):
            await self._run_steps(tick, token, report)
        return report

    async def _run_steps(self, tick: Tick, token: int, report: TickReport) -> None:
        for name, step in self.steps:
            try:
                await self.keep_lease(token)
                await step(tick)
            except Fenced:
                report.fenced = True
                report.leader = False
                self.leader.token = None
                self.last_reconcile = None
                log.warning("scheduler.fenced", step=name, token=token)
                break
            except Exception as exc:  # one failing step must not stop the others or the loop
                report.errors[name] = f"{type(exc).__name__}: {exc}"
                log.exception("scheduler.step_failed", step=name)

    async def run_forever(self, clock: Clock | None = None) -> None:
        """Tick, then wait for the interval or a wake-up, until closed.

        Each tick's ``now`` is read from ``clock`` once, by default the Redis server's clock: the
        one the workers' tasks read (their ``ctx["clock"]``) to stamp leases and SLO outcomes.
        """
        interval = self.settings.scheduler.tick_interval_s
        clock = clock or ServerClock(self.redis)
        while not self._stopping:
            try:
                await self.tick(await clock.now_ms() / 1000)
                if await self.redis.blpop([keys.WAKEUP], timeout=blocking_wait_s(self.settings, interval)):  # type: ignore[misc, arg-type]  # Redis >= 6 takes fractions
                    await self.redis.delete(keys.WAKEUP)
            except (RedisError, OSError) as exc:
                # Redis out of reach: keep trying; the lease lapses meanwhile, so a standby that
                # can reach Redis takes over, and this one rejoins as a standby.
                log.warning("scheduler.redis_unavailable", error_class=type(exc).__name__)
                self.leader.token = None
                await asyncio.sleep(interval)

    async def median_turnaround(self, lane: Lane, now: float) -> float:
        """The lane's median recent turnaround; before any sample, the configured prior."""
        raw = await self.redis.lrange(keys.lane_turnarounds(lane.name), 0, -1)  # type: ignore[misc]
        samples = []
        for entry in raw:
            _, _, seconds = entry.decode().partition(":")
            try:
                samples.append(float(seconds))
            except ValueError:
                continue
        if samples:
            return float(statistics.median(samples))
        return self.settings.slo.prior_turnaround_s or lane.completion_window_s

    async def lane_state(self, lane: Lane, now: float, turnaround_s: float) -> LaneState:
        """What the lane holds, in one round trip."""
        [state] = await self.lane_states([(lane, turnaround_s)], now)
        return state

    async def lane_states(self, lanes: Sequence[tuple[Lane, float]], now: float) -> list[LaneState]:
        """What each (lane, turnaround) holds, all in one pipelined round trip."""
        reads = 6  # commands per lane, in LaneState's order
        tick_s = self.settings.scheduler.tick_interval_s
        async with self.redis.pipeline(transaction=False) as pipe:
            for lane, turnaround_s in lanes:
                pipe.zcard(keys.lane_queue(lane.name))
                pipe.get(keys.lane_bytes(lane.name))
                pipe.zrange(keys.lane_arrivals(lane.name), 0, 0, withscores=True)
                pipe.zrange(keys.lane_queue(lane.name), 0, 0, withscores=True)
                pipe.zcount(
                    keys.lane_queue(lane.name), "-inf", pressure_horizon_ms(now, turnaround_s, tick_s)
                )
                pipe.get(keys.lane_hold(lane.name))
            replies = await pipe.execute() if lanes else []
        states = []
        for i in range(0, len(replies), reads):
            queued, nbytes, oldest, earliest, pressured, hold = replies[i : i + reads]
            states.append(
                LaneState(
                    queued=int(queued),
                    queued_bytes=int(nbytes or 0),
                    oldest_arrival_ms=int(oldest[0][1]) if oldest else None,
                    earliest_deadline_ms=int(earliest[0][1]) if earliest else None,
                    pressured=int(pressured),
                    hold_until_ms=int(hold or 0),
                )
            )
        return states


async def plan_step(tick: Tick) -> None:
    """Decide each lane's flush, reserve its jobs into planned batches and enqueue their submission."""
    s = tick.scheduler
    settings = s.settings.scheduler
    lanes = [(lane, await s.turnaround(lane, tick.now)) for lane in await load_lanes(s.redis, s.settings)]
    await s.keep_lease(tick.token)
    states = await s.lane_states(lanes, tick.now)
    for (lane, turnaround), state in zip(lanes, states, strict=True):
        decision = decide(lane, state, tick.now, tick_s=settings.tick_interval_s, turnaround_s=turnaround)
        tick.report.decisions[lane.name] = decision
        made = 0
        while made < (decision.batches if decision.flush else 0):
            # A batch closed by its deadline band does not count (scheduler.planner).
            head = await s.redis.zrange(keys.lane_queue(lane.name), 0, 0, withscores=True)
            if not head:
                break
            until = band_limit_ms(
                tick.now_ms,
                int(head[0][1]),
                settings.batch_deadline_spread,
                settings.batch_deadline_band_min_s,
            )
            batch_id = ids.batch_id(tick.now_ms)
            taken, banded = await s.batches.reserve_band(
                lane,
                batch_id,
                token=tick.token,
                now_ms=tick.now_ms,
                chunk=settings.reserve_chunk,
                until_ms=until,
            )
            if taken == 0:
                break
            made += not banded
            await s.keep_lease(tick.token)
            tick.report.planned.append(batch_id)
            tick.report.reserved += taken
            log.info("batch.planned", batch_id=batch_id, lane=lane.name, jobs=taken, reason=decision.reason)
            if await tasks.enqueue(
                s.arq, tasks.SUBMIT_BATCH, batch_id, job_id=tasks.submit_job_id(batch_id, 0)
            ):
                tick.report.submits += 1


async def prune_step(tick: Tick) -> None:
    """Drop lanes idle and empty past ``scheduler.lane_idle_s`` (once per term, first adopt the
    registry's lanes into the active set, for data written before it existed)."""
    s = tick.scheduler
    if not s.lanes_adopted:
        await adopt_registry(s.redis, tick.now_ms)
        s.lanes_adopted = True
    tick.report.steps["lanes_pruned"] = len(await prune(s.redis, s.settings, tick.now_ms))


async def polls_step(tick: Tick) -> None:
    """Enqueue ``poll_batch`` for every batch whose next poll is due (a lost poll is re-enqueued)."""
    s = tick.scheduler
    for batch_id, due_ms in await s.batches.due_polls(tick.now_ms):
        if await tasks.enqueue(s.arq, tasks.POLL_BATCH, batch_id, job_id=tasks.poll_job_id(batch_id, due_ms)):
            tick.report.polls += 1


async def reconcile_step(tick: Tick) -> None:
    """At the first tick we lead and every ``reconcile_interval_s``, enqueue ``reconcile_batches(now_ms)``."""
    s = tick.scheduler
    last = s.last_reconcile
    if last is not None and tick.now - last < s.settings.scheduler.reconcile_interval_s:
        return
    s.last_reconcile = tick.now
    # One reconciliation at a time: the id is free again once the previous run is over.
    tick.report.reconcile = await tasks.enqueue(
        s.arq, tasks.RECONCILE_BATCHES, tick.now_ms, job_id="reconcile"
    )
    await sweep_ended(tick)


async def sweep_ended(tick: Tick) -> None:
    """Hand ingestion again to batches that ended long ago and are still not ingested.

    The poll that saw a batch end enqueued its ingestion once; if that task gave up (arq's retry
    budget spent on a flaky download) the batch would sit ``ended`` with its jobs ``batched``
    forever. The arq id is the batch's one ingestion id, so a run still queued is not doubled.
    """
    s = tick.scheduler
    stale_ms = tick.now_ms - int(s.settings.scheduler.planned_timeout_s * 1000)
    ids = [i.decode() for i in await s.redis.zrange(keys.BATCHES_LIVE, 0, -1)]
    if not ids:
        return
    async with s.redis.pipeline(transaction=False) as pipe:
        for batch_id in ids:
            pipe.hmget(keys.batch(batch_id), ["state", "ended_ms"])
        rows = await pipe.execute()
    swept = 0
    for batch_id, (state, ended_ms) in zip(ids, rows, strict=True):
        if state == b"ended" and ended_ms and int(ended_ms) < stale_ms:
            swept += await tasks.enqueue(
                s.arq, tasks.INGEST_BATCH, batch_id, job_id=tasks.ingest_job_id(batch_id)
            )
    if swept:
        log.warning("batches.ingestion_swept", batches=swept)
    tick.report.steps["swept"] = swept
