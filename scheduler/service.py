"""The scheduler: a tick loop under the leader lease that plans batches and hands I/O to workers,
and :func:`build_scheduler`, the one place its tick is assembled.

``tick(now)`` is a function of Redis state and the clock: it takes or renews the lease, then runs
:attr:`Scheduler.steps` in order, each a coroutine ``step(tick) -> None`` (:mod:`scheduler.tick`)
that records what it did on ``tick.report``. :func:`build_scheduler` builds every step once with
the narrow dependencies it needs; add a step there with one line. ``run_forever()`` only alternates
``tick(clock())`` and waiting for the tick interval or a wake-up (a job enqueued pushes to
``keys.WAKEUP``).

Steps here: ``plan`` (flush decisions over the active lanes, their backlogs read in one pipelined
round trip, reservation into planned batches, ``submit_batch``), ``lanes`` (prune idle empty lanes),
``polls`` (``poll_batch`` for every batch whose next poll is due) and ``reconcile`` (at a term's
first tick and every ``reconcile_interval_s``, the ``reconcile_batches`` task for stale planned
batches, pending provider file deletions and jobs stranded ``batched`` in closed batches). The
others live beside what they own: ``slo`` (scheduler/slo/tracker.py), ``retention`` (scheduler/ledger/retention.py),
``sync`` (scheduler/planning/sync_dispatch.py) and ``webhooks`` (scheduler/planning/webhook_dispatch.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType

import structlog
from arq.connections import ArqRedis
from redis.asyncio import Redis
from redis.exceptions import RedisError

from config.settings import SchedulerSettings, Settings
from config.tracing import OFF, Tracing, phase
from scheduler.errors import Fenced
from scheduler.ledger import ids, keys, tasks
from scheduler.ledger.clock import Clock, ServerClock
from scheduler.ledger.heartbeat import heartbeat
from scheduler.ledger.leader import Leader, holder_id
from scheduler.ledger.ledger import Ledger
from scheduler.ledger.retention import Retention, RetentionStep
from scheduler.ledger.store import blocking_wait_s
from scheduler.planning.batches import Batches
from scheduler.planning.lanes import Lane, adopt_registry, load_lanes, prune
from scheduler.planning.planner import LaneBacklog, band_limit_ms, decide, pressure_horizon_ms
from scheduler.planning.sync_dispatch import SyncDispatch
from scheduler.planning.webhook_dispatch import WebhookDispatch
from scheduler.slo.tracker import SloTracker
from scheduler.tick import Step, Tick, TickReport

log = structlog.get_logger(__name__)


# The expected batch turnaround of a lane at a time (epoch seconds), which deadline pressure plans with.
TurnaroundModel = Callable[[Lane, float], Awaitable[float]]


class Scheduler:
    """The tick loop: the lease, then ``steps`` in order. Built by :func:`build_scheduler`;
    ``async with build_scheduler(settings, redis, arq_pool) as s: await s.run_forever()``."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        leader: Leader,
        steps: Sequence[tuple[str, Step]],
        *,
        tracing: Tracing = OFF,
        owns_tracing: bool = False,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.leader = leader
        self.tracing = tracing  # sampled ticks are traced on it
        self.owns_tracing = owns_tracing  # then close() stops it; a shared one is its owner's to stop
        self.ticks_led = 0  # leader ticks, counted while tracing is on: every tick_sample_every-th is traced
        self.steps: list[tuple[str, Step]] = list(steps)
        # The lease is renewed within a tick once this much of its TTL has passed (monotonic clock,
        # replaceable in tests), so a long tick never outlives it.
        self.monotonic: Callable[[], float] = time.monotonic
        self.renewed_at = 0.0
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
        if self.owns_tracing:
            self.tracing.shutdown()
        try:
            await self.leader.release()
        except (RedisError, OSError):
            log.warning("scheduler.release_failed")  # the lease lapses by itself after its TTL

    async def tick(self, now: float) -> TickReport:
        """Take or renew the lease, then, as leader, run every step at ``now`` (epoch seconds)."""
        token = await self.leader.ensure()
        if token is None:
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
        tick = Tick(now, int(now * 1000), token, report, keep_lease=lambda: self.keep_lease(token))

        async def renew() -> bool:
            """Renew the lease every third of its TTL however long one step takes; between steps
            :meth:`keep_lease` checks the outcome, and a lost lease stops the tick fenced."""
            try:
                await self.keep_lease(token)
            except Fenced:
                return False
            return True

        async with heartbeat(renew, self.leader.ttl_ms / 3000, name="leader"):
            if self._sampled():
                with self.tracing.span("scheduler.tick", attributes={"batchshift.token": token}) as span:
                    await self._run_steps(tick, token, report)
                    span.set(**_tick_attributes(report))
            else:
                await self._run_steps(tick, token, report)
        return report

    def _sampled(self) -> bool:
        """Whether this leader tick is traced: the first, then one in ``tracing.tick_sample_every``."""
        every = self.settings.tracing.tick_sample_every
        if not self.tracing.enabled or every == 0:
            return False
        self.ticks_led += 1
        return (self.ticks_led - 1) % every == 0

    async def _run_steps(self, tick: Tick, token: int, report: TickReport) -> None:
        """Each step in order; in a traced tick, each is a ``tick.<step>`` span of it."""
        for name, step in self.steps:
            try:
                await self.keep_lease(token)
                with phase(f"tick.{name}"):
                    await step(tick)
            except Fenced:
                report.fenced = True
                report.leader = False
                self.leader.token = None
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


def _tick_attributes(report: TickReport) -> dict[str, int | bool]:
    """What a traced tick's span says it did."""
    return {
        "batchshift.planned": len(report.planned),
        "batchshift.reserved": report.reserved,
        "batchshift.submits": report.submits,
        "batchshift.polls": report.polls,
        "batchshift.step_errors": len(report.errors),
        "batchshift.fenced": report.fenced,
    }


def build_scheduler(
    settings: Settings,
    redis: Redis,
    arq_pool: ArqRedis,
    *,
    holder: str | None = None,
    tracing: Tracing | None = None,
) -> Scheduler:
    """The scheduler with its whole tick, each step given only what it needs.

    ``slo`` runs first, so at-risk jobs flip before the planner reserves them into a batch, and it
    is the plan step's turnaround model (its quantile plus the sync margin), so lanes flush before
    their jobs would flip; it reads each lane's health once per tick for both. Flips are spans in
    their jobs' traces, and sampled ticks are traced, on ``tracing`` (shared, left open) or one
    built from settings (closed with it).
    """
    conf = settings.scheduler
    batches = Batches(redis)
    used = Tracing.from_settings(settings.tracing) if tracing is None else tracing
    slo = SloTracker(settings, redis, arq_pool, Ledger.for_settings(redis, settings), used)
    steps: list[tuple[str, Step]] = [
        ("slo", slo.step),
        ("plan", PlanStep(settings, redis, arq_pool, batches, slo.expected_turnaround)),
        ("polls", PollStep(batches, arq_pool)),
        ("reconcile", ReconcileStep(conf, redis, arq_pool)),
        ("retention", RetentionStep(Retention(redis, settings), conf.reconcile_interval_s)),
        ("sync", SyncDispatch(conf, redis, arq_pool)),
        ("webhooks", WebhookDispatch(redis, arq_pool)),
        ("lanes", PruneStep(settings, redis)),
    ]
    leader = Leader(redis, holder=holder or holder_id(), ttl_s=conf.lease_ttl_s)
    return Scheduler(settings, redis, leader, steps, tracing=used, owns_tracing=tracing is None)


class PlanStep:
    """The ``plan`` tick step: decide each lane's flush, reserve its jobs into planned batches and
    enqueue their submission."""

    def __init__(
        self, settings: Settings, redis: Redis, arq: ArqRedis, batches: Batches, turnaround: TurnaroundModel
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.arq = arq
        self.batches = batches
        self.turnaround = turnaround

    async def __call__(self, tick: Tick) -> None:
        conf = self.settings.scheduler
        lanes = [
            (lane, await self.turnaround(lane, tick.now))
            for lane in await load_lanes(self.redis, self.settings)
        ]
        await tick.keep_lease()
        backlogs = await self.backlogs(lanes, tick.now)
        for (lane, turnaround), backlog in zip(lanes, backlogs, strict=True):
            decision = decide(lane, backlog, tick.now, tick_s=conf.tick_interval_s, turnaround_s=turnaround)
            tick.report.decisions[lane.name] = decision
            made = 0
            while made < (decision.batches if decision.flush else 0):
                # A batch closed by its deadline band does not count (scheduler.planning.planner).
                head = await self.redis.zrange(keys.lane_queue(lane.name), 0, 0, withscores=True)
                if not head:
                    break
                until = band_limit_ms(
                    tick.now_ms, int(head[0][1]), conf.batch_deadline_spread, conf.batch_deadline_band_min_s
                )
                batch_id = ids.batch_id(tick.now_ms)
                band = {
                    "token": tick.token,
                    "now_ms": tick.now_ms,
                    "chunk": conf.reserve_chunk,
                    "until_ms": until,
                }
                if lane.group_prefixes:
                    urgent = pressure_horizon_ms(tick.now, turnaround, conf.tick_interval_s)
                    taken, banded = await self.batches.reserve_grouped(
                        lane, batch_id, **band, urgent_until_ms=urgent
                    )
                else:
                    taken, banded = await self.batches.reserve_band(lane, batch_id, **band)
                if taken == 0:
                    break
                made += not banded
                await tick.keep_lease()
                tick.report.planned.append(batch_id)
                tick.report.reserved += taken
                log.info(
                    "batch.planned", batch_id=batch_id, lane=lane.name, jobs=taken, reason=decision.reason
                )
                if await tasks.enqueue(
                    self.arq, tasks.SUBMIT_BATCH, batch_id, job_id=tasks.submit_job_id(batch_id, 0)
                ):
                    tick.report.submits += 1

    async def backlogs(self, lanes: Sequence[tuple[Lane, float]], now: float) -> list[LaneBacklog]:
        """What each (lane, turnaround) holds, all in one pipelined round trip."""
        reads = 6  # commands per lane, in LaneBacklog's order
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
        backlogs = []
        for i in range(0, len(replies), reads):
            queued, nbytes, oldest, earliest, pressured, hold = replies[i : i + reads]
            backlogs.append(
                LaneBacklog(
                    queued=int(queued),
                    queued_bytes=int(nbytes or 0),
                    oldest_arrival_ms=int(oldest[0][1]) if oldest else None,
                    earliest_deadline_ms=int(earliest[0][1]) if earliest else None,
                    pressured=int(pressured),
                    hold_until_ms=int(hold or 0),
                )
            )
        return backlogs


class PruneStep:
    """The ``lanes`` tick step: drop lanes idle and empty past ``scheduler.lane_idle_s`` (at a
    term's first tick, first adopt the registry's lanes into the active set, for data written
    before it existed)."""

    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        self._adopted: int | None = None  # the fencing token of the term that adopted the registry

    async def __call__(self, tick: Tick) -> None:
        if self._adopted != tick.token:
            await adopt_registry(self.redis, tick.now_ms)
            self._adopted = tick.token
        tick.report.steps["lanes_pruned"] = len(await prune(self.redis, self.settings, tick.now_ms))


class PollStep:
    """The ``polls`` tick step: enqueue ``poll_batch`` for every batch whose next poll is due (a lost
    poll is re-enqueued)."""

    def __init__(self, batches: Batches, arq: ArqRedis) -> None:
        self.batches = batches
        self.arq = arq

    async def __call__(self, tick: Tick) -> None:
        for batch_id, due_ms in await self.batches.due_polls(tick.now_ms):
            job_id = tasks.poll_job_id(batch_id, due_ms)
            if await tasks.enqueue(self.arq, tasks.POLL_BATCH, batch_id, job_id=job_id):
                tick.report.polls += 1


class ReconcileStep:
    """The ``reconcile`` tick step: at a term's first tick and every ``reconcile_interval_s``,
    enqueue ``reconcile_batches(now_ms)`` and sweep batches whose ingestion was lost."""

    def __init__(self, conf: SchedulerSettings, redis: Redis, arq: ArqRedis) -> None:
        self.conf = conf
        self.redis = redis
        self.arq = arq
        self.last: float | None = None  # None: reconcile at the next tick
        self._token: int | None = None  # the fencing token of the term ``last`` belongs to

    async def __call__(self, tick: Tick) -> None:
        if tick.token != self._token:  # a new term: reconcile at once
            self._token, self.last = tick.token, None
        if self.last is not None and tick.now - self.last < self.conf.reconcile_interval_s:
            return
        self.last = tick.now
        # One reconciliation at a time: the id is free again once the previous run is over.
        tick.report.reconcile = await tasks.enqueue(
            self.arq, tasks.RECONCILE_BATCHES, tick.now_ms, job_id="reconcile"
        )
        await self.sweep_ended(tick)

    async def sweep_ended(self, tick: Tick) -> None:
        """Hand ingestion again to batches that ended long ago and are still not ingested.

        The poll that saw a batch end enqueued its ingestion once; if that task gave up (arq's retry
        budget spent on a flaky download) the batch would sit ``ended`` with its jobs ``batched``
        forever. The arq id is the batch's one ingestion id, so a run still queued is not doubled.
        """
        stale_ms = tick.now_ms - int(self.conf.planned_timeout_s * 1000)
        live = [i.decode() for i in await self.redis.zrange(keys.BATCHES_LIVE, 0, -1)]
        if not live:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for batch_id in live:
                pipe.hmget(keys.batch(batch_id), ["state", "ended_ms"])
            rows = await pipe.execute()
        swept = 0
        for batch_id, (state, ended_ms) in zip(live, rows, strict=True):
            if state == b"ended" and ended_ms and int(ended_ms) < stale_ms:
                swept += await tasks.enqueue(
                    self.arq, tasks.INGEST_BATCH, batch_id, job_id=tasks.ingest_job_id(batch_id)
                )
        if swept:
            log.warning("batches.ingestion_swept", batches=swept)
        tick.report.steps["swept"] = swept
