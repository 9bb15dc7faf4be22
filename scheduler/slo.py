"""The SLO tracker's tick step: predict, flip, judge each lane, decide alerts, publish the lane's snapshot.

Per lane, every tick: read its health (:mod:`scheduler.health`), predict its queued jobs and
batches in flight (:mod:`scheduler.prediction`), flip the jobs at risk and cancel emptied batches
(:mod:`scheduler.flips`), bring its burn-rate windows up to date (:mod:`scheduler.burn`), step its
state with hysteresis (:mod:`scheduler.lane_state`), decide its alerts into the outbox
(:mod:`scheduler.alerting`), and write its snapshot (``keys.lane_slo``) for ``GET /v1/lanes`` and
for the next leader. The incident state, the alert outbox and the snapshot (with the lane's state)
are written in one step fenced by the tick's leader token, so a leader deposed mid-tick neither
pages twice nor overwrites its successor's snapshot. Then, if notifications are due, enqueue ``send_alerts``. The tracker also
gives the planner its expected turnaround (quantile + sync margin), so lanes flush before their
jobs would flip.

Attach it with one line in the scheduler: ``self.slo = SloTracker(self)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from redis.asyncio import Redis

from scheduler import alerting, keys, tasks
from scheduler.alerting import Condition
from scheduler.burn import BucketWindows
from scheduler.flips import Flipper
from scheduler.health import LaneHealth, read_health
from scheduler.jobs import iso
from scheduler.lane_state import Evidence, LaneState, burn_windows, gather, rule_name, step
from scheduler.lanes import Lane, load_lanes
from scheduler.ledger import Ledger
from scheduler.prediction import (
    LanePrediction,
    LiveBatch,
    expected_turnaround_s,
    live_batches,
    predict_lane,
)

if TYPE_CHECKING:
    from scheduler.service import Scheduler, Tick

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class LaneReport:
    """What the SLO step did for one lane."""

    state: str
    flipped: int = 0
    held: int = 0
    cancelled: list[str] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)  # "<action>:<rule>"


@dataclass(slots=True)
class SloReport:
    """What the SLO step did this tick (``tick.report.steps["slo"]``)."""

    lanes: dict[str, LaneReport] = field(default_factory=dict)
    flipped: int = 0
    cancelled: list[str] = field(default_factory=list)
    alerts: list[alerting.AlertEvent] = field(default_factory=list)
    send_alerts: bool = False  # the send_alerts task was enqueued


class SloTracker:
    """Keeps each lane's in-memory burn windows and state between ticks; one per scheduler."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.settings = scheduler.settings
        self.redis = scheduler.redis
        ledger = Ledger.for_settings(scheduler.redis, self.settings)
        self.flipper = Flipper(scheduler.redis, scheduler.arq, ledger, self.settings)
        self.windows: dict[str, BucketWindows] = {}
        self.states: dict[str, LaneState] = {}
        self._health: dict[str, tuple[int, LaneHealth]] = {}
        self._token: int | None = None  # the fencing token of the last tick we ran
        # First, so at-risk jobs flip before the planner reserves them into a batch.
        scheduler.steps.insert(0, ("slo", self.step))
        scheduler.turnaround = self.expected_turnaround

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
        """One pass over every lane at ``now_ms``, writing under the leader's fencing ``token``."""
        report = SloReport()
        self.flipper.new_tick()
        in_flight = await live_batches(self.redis)
        for lane in await load_lanes(self.redis, self.settings):
            lane_report = await self._lane(lane, in_flight.get(lane.name, []), now_ms, token, report)
            report.lanes[lane.name] = lane_report
        count, first = await alerting.due_count(self.redis, now_ms)
        if count and first is not None:
            report.send_alerts = await tasks.enqueue(
                self.scheduler.arq, tasks.SEND_ALERTS, job_id=f"send_alerts:{first}"
            )
        return report

    async def _lane(
        self, lane: Lane, batches: list[LiveBatch], now_ms: int, token: int, report: SloReport
    ) -> LaneReport:
        settings = self.settings
        health = await self.health(lane, now_ms)
        prediction = await predict_lane(self.redis, settings, health, batches, now_ms, lane.provider)
        flips = await self.flipper.run(prediction, now_ms)
        windows = self.windows.get(lane.name)
        if windows is None:
            windows = BucketWindows(lane.name, settings.slo.bucket_s, burn_windows(settings))
            self.windows[lane.name] = windows
        await windows.refresh(self.redis, now_ms / 1000)
        evidence = gather(settings, health, prediction, windows, flips.at_risk)
        before = self.states.get(lane.name) or await self._stored_state(lane.name)
        after = step(before, evidence.target(settings), now_ms, settings.slo.recover_ticks)
        self.states[lane.name] = after
        if after.state != before.state:
            log.info("lane.state_changed", lane=lane.name, state=after.state, prior=before.state,
                     reasons=evidence.reasons)  # fmt: skip
        figures = self._figures(lane, health, prediction, windows, evidence, after)
        snapshot = ("SET", keys.lane_slo(lane.name), orjson.dumps(figures), "EX", keys.LANE_SLO_TTL_S)
        conditions = self._conditions(lane.name, evidence, after, figures)
        events = await alerting.evaluate(
            self.redis, settings, lane.name, conditions, now_ms, token=token, also=[snapshot]
        )
        report.flipped += len(flips.flipped)
        report.cancelled += flips.cancelled
        report.alerts += events
        return LaneReport(
            state=after.state,
            flipped=len(flips.flipped),
            held=flips.held,
            cancelled=flips.cancelled,
            alerts=[f"{e.action}:{e.rule}" for e in events],
        )

    async def _stored_state(self, lane: str) -> LaneState:
        """The state the last leader left (so a failover neither re-pages nor forgets an incident)."""
        raw = await self.redis.get(keys.lane_slo(lane))
        return LaneState.from_dict(orjson.loads(raw) if raw else None)

    def _figures(
        self,
        lane: Lane,
        health: LaneHealth,
        prediction: LanePrediction,
        windows: BucketWindows,
        evidence: Evidence,
        state: LaneState,
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
        self, lane: str, evidence: Evidence, state: LaneState, figures: dict[str, Any]
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
