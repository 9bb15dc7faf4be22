"""The SLO tracker's tick step: predict, flip, judge each lane, decide alerts, publish the lane's snapshot.

Per lane, every tick: read its health (:mod:`scheduler.slo.health`), predict its queued jobs and
batches in flight (:mod:`scheduler.slo.prediction`), move the waiting jobs of a lagging or
quota-full lane to a healthy sibling lane (:mod:`scheduler.slo.siblings`), flip the jobs at risk, cancel emptied batches and
bring forward the poll of a batch whose next one would come after a job's latest safe flip time
(:mod:`scheduler.slo.flips`; the polls step enqueues it), bring its burn-rate windows up to date (:mod:`scheduler.slo.burn`),
move its state on with hysteresis (:mod:`scheduler.slo.lane_state`), decide its alerts into the outbox
(:mod:`scheduler.slo.alerting`), and write its snapshot (``keys.lane_slo``) for ``GET /v1/lanes`` and
for the next leader. Every lane's reads come in one pipelined round trip, and every lane's
incident state, alert outbox and snapshot (with the lane's state) are written together in one step
fenced by the tick's leader token, so a leader deposed mid-tick neither pages twice nor overwrites
its successor's snapshots; a tick's round trips do not grow with its lanes (flips, made only where
jobs are at risk, are the exception). Then, if notifications are due, enqueue ``send_alerts``. The tracker also
gives the planner its expected turnaround (quantile + sync margin), so lanes flush before their
jobs would flip.

:func:`scheduler.service.build_scheduler` runs :meth:`SloTracker.step` first in the tick and hands
:meth:`SloTracker.expected_turnaround` to the plan step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from arq.connections import ArqRedis
from redis.asyncio import Redis

from config.settings import Settings
from config.tracing import OFF, Tracing
from scheduler.ledger import keys, tasks
from scheduler.ledger.jobs import iso
from scheduler.ledger.leader import Command
from scheduler.ledger.ledger import Ledger
from scheduler.planning.lanes import Lane, load_lanes, serves
from scheduler.slo import alerting
from scheduler.slo.alerting import Condition
from scheduler.slo.burn import BucketWindows
from scheduler.slo.flips import Flipper, queue_index_reads
from scheduler.slo.health import LaneHealth, health_from, queue_health_reads, read_health
from scheduler.slo.lane_state import Evidence, LaneSloState, burn_windows, gather, rule_name, transition
from scheduler.slo.prediction import (
    LanePrediction,
    LiveBatch,
    expected_turnaround_s,
    live_batches,
    prediction_from,
    queue_prediction_reads,
    sync_lane,
)
from scheduler.slo.sibling_plan import LaneLoad, Sibling, sibling, stall_limit_s
from scheduler.slo.siblings import Failover, lane_parts
from scheduler.tick import Tick

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class LaneReport:
    """What the SLO step did for one lane."""

    state: str
    flipped: int = 0
    relaned: int = 0  # moved to sibling lanes before any flip
    held: int = 0
    cancelled: list[str] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)  # "<action>:<rule>"


@dataclass(slots=True)
class SloReport:
    """What the SLO step did this tick (``tick.report.steps["slo"]``)."""

    lanes: dict[str, LaneReport] = field(default_factory=dict)
    flipped: int = 0
    relaned: int = 0
    cancelled: list[str] = field(default_factory=list)
    polls: dict[str, int] = field(default_factory=dict)  # batch id -> its poll brought forward to (ms)
    alerts: list[alerting.AlertEvent] = field(default_factory=list)
    send_alerts: bool = False  # the send_alerts task was enqueued


@dataclass(frozen=True, slots=True)
class _LaneReads:
    """What the SLO step read of one lane this tick (:meth:`SloTracker._read`)."""

    health: LaneHealth
    oldest: list[tuple[bytes, float]]  # the lane's oldest arrival (ZRANGE 0 0 WITHSCORES)
    earliest: list[tuple[bytes, float]]  # its earliest deadline
    incidents: dict[bytes, bytes]  # its open incidents (keys.alert_state)
    state: LaneSloState  # before this tick: this term's last, else the stored snapshot's


class SloTracker:
    """Keeps each lane's in-memory burn windows and state between ticks; one per scheduler."""

    def __init__(
        self, settings: Settings, redis: Redis, arq: ArqRedis, ledger: Ledger, tracing: Tracing = OFF
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.arq = arq
        self.flipper = Flipper(redis, arq, ledger, settings, tracing)
        self.failover = Failover(redis, ledger, settings, tracing)
        self._in_flight: dict[str, list[LiveBatch]] = {}  # this tick's batches by lane, for siblings
        self.windows: dict[str, BucketWindows] = {}
        self.states: dict[str, LaneSloState] = {}
        self._health: dict[str, tuple[int, LaneHealth]] = {}
        self._token: int | None = None  # the fencing token of the last tick we ran

    async def health(self, lane: Lane, now_ms: int) -> LaneHealth:
        """The lane's health, read at most once per tick."""
        cached = self._health.get(lane.name)
        if cached is not None and cached[0] == now_ms:
            return cached[1]
        health = await read_health(self.redis, self.settings, lane.name, lane.provider, now_ms)
        self._health[lane.name] = (now_ms, health)
        return health

    async def expected_turnaround(self, lane: Lane, now: float) -> float:
        """The planner's turnaround for deadline pressure: the quantile plus the sync margin."""
        return expected_turnaround_s(await self.health(lane, int(now * 1000)), self.settings)

    async def step(self, tick: Tick) -> None:
        """The scheduler step: run at the tick's time and record the report."""
        if tick.token != self._token:
            # A new term: another leader may have moved the lanes on meanwhile; start from its snapshot.
            self.states.clear()
            self._token = tick.token
        tick.report.steps["slo"] = await self.run(tick.now_ms, tick.token)

    async def run(self, now_ms: int, token: int) -> SloReport:
        """One pass over every lane at ``now_ms``, writing under the leader's fencing ``token``.

        Every lane's reads go in one pipelined round trip (:meth:`_read`), and every lane's fenced
        writes in another (:func:`alerting.write_lanes`): a tick's round trips do not grow with the
        lanes. Flips, which only a lane with jobs at risk makes, are the lane's own.
        """
        report = SloReport()
        self.flipper.new_tick()
        in_flight = await live_batches(self.redis)
        self._in_flight = in_flight
        lanes = await load_lanes(self.redis, self.settings)
        reads = await self._read(lanes, in_flight, now_ms)
        writes: list[list[Command]] = []
        events: list[alerting.AlertEvent] = []
        for lane, lane_reads in zip(lanes, reads, strict=True):
            lane_report, planned = await self._lane(
                lane, in_flight.get(lane.name, []), lane_reads, now_ms, report
            )
            report.lanes[lane.name] = lane_report
            writes.append(planned.writes)
            events += planned.events
        await alerting.write_lanes(self.redis, token, writes)
        report.alerts += events
        count, first = await alerting.due_count(self.redis, now_ms)
        if count and first is not None:
            report.send_alerts = await tasks.enqueue(
                self.arq, tasks.SEND_ALERTS, job_id=f"send_alerts:{first}"
            )
        return report

    async def _read(
        self, lanes: list[Lane], in_flight: dict[str, list[LiveBatch]], now_ms: int
    ) -> list[_LaneReads]:
        """Every lane's reads of this tick in one pipelined round trip: its health samples, the ends of
        its queue, its SLO buckets, its open incidents, its batches' deadline indexes (for the
        flipper) and, at a term's start, its last snapshot."""
        settings = self.settings
        counts: list[tuple[int, bool]] = []
        indexes: list[tuple[str, int]] = []
        async with self.redis.pipeline(transaction=False) as pipe:
            for lane in lanes:
                queue_health_reads(pipe, settings, lane.name)
                queue_prediction_reads(pipe, lane.name)
                pipe.hgetall(keys.alert_state(lane.name))
                stored = lane.name not in self.states
                if stored:
                    pipe.get(keys.lane_slo(lane.name))
                counts.append((self._windows(lane.name).queue_reads(pipe, now_ms / 1000), stored))
            for batches in in_flight.values():
                indexes += [(b.id, queue_index_reads(pipe, b.id)) for b in batches]
            replies = await pipe.execute()
        out = []
        i = 0
        deletes: list[tuple[str, ...]] = []
        for lane, (buckets, stored) in zip(lanes, counts, strict=True):
            turn, sync, oldest, earliest, incidents = replies[i : i + 5]
            i += 5
            snapshot = replies[i] if stored else None
            i += stored
            found = self._windows(lane.name).apply(replies[i : i + buckets], now_ms / 1000)
            i += buckets
            if found:
                deletes.append(found)
            health = health_from(settings, lane.name, lane.provider, turn, sync, now_ms)
            self._health[lane.name] = (now_ms, health)
            state = self.states.get(lane.name) or LaneSloState.from_dict(
                orjson.loads(snapshot) if snapshot else None
            )
            out.append(_LaneReads(health, oldest, earliest, incidents, state))
        for batch_id, count in indexes:
            self.flipper.known_index(batch_id, replies[i : i + count])
            i += count
        if deletes:
            async with self.redis.pipeline(transaction=False) as pipe:
                for found in deletes:
                    pipe.hdel(*found)
                await pipe.execute()
        return out

    def _windows(self, lane: str) -> BucketWindows:
        windows = self.windows.get(lane)
        if windows is None:
            windows = BucketWindows(lane, self.settings.slo.bucket_s, burn_windows(self.settings))
            self.windows[lane] = windows
        return windows

    async def _lane(
        self, lane: Lane, batches: list[LiveBatch], reads: _LaneReads, now_ms: int, report: SloReport
    ) -> tuple[LaneReport, alerting.LaneAlerts]:
        """Judge one lane from its reads: flip what is at risk, then decide its state, alerts and
        snapshot (returned, to be written with every other lane's)."""
        settings = self.settings
        health = reads.health
        prediction = prediction_from(
            settings, health, batches, now_ms, lane.provider, reads.oldest, reads.earliest
        )
        relaned = 0
        if settings.siblings_of(lane.name):
            load = await self._load(lane.name, reads.state.state, health, batches, now_ms)
            moved = await self.failover.run(
                load, prediction, lambda name: self._sibling(name, now_ms), now_ms
            )
            relaned = moved.total
        flips = await self.flipper.run(prediction, now_ms)
        windows = self._windows(lane.name)
        evidence = gather(settings, health, prediction, windows, flips.at_risk)
        before = reads.state
        after = transition(before, evidence.target(settings), now_ms, settings.slo.recover_ticks)
        self.states[lane.name] = after
        if after.state != before.state:
            log.info("lane.state_changed", lane=lane.name, state=after.state, prior=before.state,
                     reasons=evidence.reasons)  # fmt: skip
        figures = self._figures(lane, health, prediction, windows, evidence, after)
        snapshot = ("SET", keys.lane_slo(lane.name), orjson.dumps(figures), "EX", keys.LANE_SLO_TTL_S)
        conditions = self._conditions(lane.name, evidence, after, figures)
        planned = alerting.decide_lane(settings, lane.name, reads.incidents, conditions, now_ms)
        planned.writes.append(snapshot)
        report.flipped += len(flips.flipped)
        report.relaned += relaned
        report.cancelled += flips.cancelled
        report.polls |= flips.polls
        lane_report = LaneReport(
            state=after.state,
            flipped=len(flips.flipped),
            relaned=relaned,
            held=flips.held,
            cancelled=flips.cancelled,
            alerts=[f"{e.action}:{e.rule}" for e in planned.events],
        )
        return lane_report, planned

    async def _load(
        self, lane: str, state: str, health: LaneHealth, batches: list[LiveBatch], now_ms: int
    ) -> LaneLoad:
        """A lane as the failover decision sees it: its state, when its batches count as stalled, its
        slowest batch in flight, and whether its quota is full."""
        elapsed = [
            (now_ms - b.submitted_ms) / 1000
            for b in batches
            if b.submitted_ms is not None and b.ended_ms is None
        ]
        slo = self.settings.slo
        limit = stall_limit_s(
            health.usual_turnaround(), health.turnaround(slo.turnaround_quantile), slo.lagging_factor
        )
        return LaneLoad(lane, state, limit, max(elapsed, default=0.0), await self.failover.held(lane, now_ms))

    async def _sibling(self, name: str, now_ms: int) -> Sibling | None:
        """Sibling lane ``name`` as a destination (None: its provider is not configured, or does not
        serve its model)."""
        provider, model, _ = lane_parts(name)
        account = self.settings.providers.get(provider)
        if account is None or not serves(self.settings, provider, account, model):
            log.warning("lane.sibling_unconfigured", lane=name)
            return None
        state = self.states.get(name)
        if state is None:
            raw = await self.redis.get(keys.lane_slo(name))
            state = LaneSloState.from_dict(orjson.loads(raw) if raw else None)
        health = await read_health(self.redis, self.settings, name, provider, now_ms)
        load = await self._load(name, state.state, health, self._in_flight.get(name, []), now_ms)
        turnaround = health.turnaround(self.settings.slo.turnaround_quantile)
        margin = sync_lane(self.settings, provider, health).margin_s
        return sibling(load, turnaround, margin, self.settings.scheduler.tick_interval_s)

    def _figures(
        self,
        lane: Lane,
        health: LaneHealth,
        prediction: LanePrediction,
        windows: BucketWindows,
        evidence: Evidence,
        state: LaneSloState,
    ) -> dict[str, Any]:
        """The lane's snapshot: its state, with what the API and alert details show."""
        longest = windows.longest
        overall = windows.sums(longest)
        return {
            **state.to_dict(),
            "lane": lane.name,
            "provider": lane.provider,
            "updated_ms": prediction.now_ms,
            "reasons": evidence.reasons,
            **health.figures(),
            "turnaround_prior_s": health.prior_turnaround_s,
            "turnaround_quantile_s": round(prediction.turnaround_s, 3),
            "on_time_ratio": overall.on_time_ratio(),
            "on_time_window_s": longest,
            "finished_jobs": overall.all,
            "burn_rates": evidence.burn_rates,
            "burn_firing": evidence.firing,
            "sync_share": evidence.sync_share,
            "sync_share_jobs": evidence.sync_share_jobs,
            "batches_in_flight": len(prediction.batches),
            "slowest_batch_elapsed_s": round(evidence.slowest_elapsed_s, 3),
            "next_flush_ms": prediction.next_flush_ms,
            "predicted_oldest_completion_ms": prediction.oldest_completion_ms(),
        }

    def _conditions(
        self, lane: str, evidence: Evidence, state: LaneSloState, figures: dict[str, Any]
    ) -> list[Condition]:
        slo = self.settings.slo
        details = {k: v for k, v in figures.items() if k not in ("calm_ticks", "lane")}
        out = [
            Condition(
                rule="health",
                active=state.state != "healthy",
                severity="critical" if state.state == "breaching" else "warning",
                page=True,
                summary=f"batchshift lane {lane} is {state.state}: " + "; ".join(evidence.reasons),
                details=details,
            )
        ]
        for rule in slo.burn_rules:
            name = rule_name(rule)
            burn = evidence.burn_rates.get(name, {})
            out.append(
                Condition(
                    rule=name,
                    active=name in evidence.firing,
                    severity="critical" if rule.severity == "page" else "warning",
                    page=rule.severity == "page",
                    summary=(
                        f"batchshift lane {lane} burns its on-time error budget at {burn.get('long', 0):g}x "
                        f"over {rule.long_window_s:g}s and {burn.get('short', 0):g}x over {rule.short_window_s:g}s"
                    ),
                    details=details,
                )
            )
        share = evidence.sync_share
        out.append(
            Condition(
                rule="sync_share",
                active=share is not None
                and evidence.sync_share_jobs >= slo.sync_share_min_jobs
                and share > slo.sync_share_alert,
                severity="warning",
                page=False,
                summary=f"batchshift lane {lane}: {0 if share is None else share:.0%} of jobs went to sync "
                f"(threshold {slo.sync_share_alert:.0%}): the batch savings are leaking",
                details=details,
            )
        )
        return out


async def lane_views(redis: Redis, now_ms: int) -> list[dict[str, Any]]:
    """Every lane as ``GET /v1/lanes`` shows it: the tick's snapshot plus live queue figures.

    The queue figures (queued count, oldest job age) are read now; the rest is what the leader's
    last tick saw (``updated_at``). A lane no tick has judged yet shows ``state: null``.
    """
    names = sorted(n.decode() for n in await redis.smembers(keys.LANES))  # type: ignore[misc]
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.get(keys.lane_slo(name))
            pipe.zcard(keys.lane_queue(name))
            pipe.zrange(keys.lane_arrivals(name), 0, 0, withscores=True)
        replies = await pipe.execute()
    views = []
    for i, name in enumerate(names):
        raw, queued, oldest = replies[i * 3 : i * 3 + 3]
        snap: dict[str, Any] = orjson.loads(raw) if raw else {}
        views.append(
            {
                "lane": name,
                "state": snap.get("state"),
                "state_since": iso(snap.get("since_ms")),
                "reasons": snap.get("reasons", []),
                "queued": int(queued),
                "oldest_job_age_s": round((now_ms - oldest[0][1]) / 1000, 3) if oldest else None,
                "batches_in_flight": snap.get("batches_in_flight", 0),
                "turnaround_s": {
                    "p50": snap.get("turnaround_p50_s"),
                    "p95": snap.get("turnaround_p95_s"),
                    "p99": snap.get("turnaround_p99_s"),
                    "samples": snap.get("turnaround_samples", 0),
                    "prior": snap.get("turnaround_prior_s"),
                },
                "sync_p99_s": snap.get("sync_p99_s"),
                "on_time_ratio": snap.get("on_time_ratio"),
                "finished_jobs": snap.get("finished_jobs", 0),
                "burn_rates": snap.get("burn_rates", {}),
                "sync_share": snap.get("sync_share"),
                "predicted_oldest_completion": iso(snap.get("predicted_oldest_completion_ms")),
                "updated_at": iso(snap.get("updated_ms")),
            }
        )
    return views
