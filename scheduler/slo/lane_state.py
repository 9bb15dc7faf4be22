"""Lane states, healthy → lagging → breaching, with hysteresis so a lane does not flap.

A lane is *lagging* when its batches take longer than usual: a batch in flight, or the newest
ended one, past ``settings.slo.lagging_factor`` times the median turnaround. It is *breaching*
when deadlines are in danger: jobs at risk (flipping) this tick, jobs finished late in the
shortest burn window, or a page-level burn rule firing. A worse state is entered at once; a
better one only after ``settings.slo.recover_ticks`` consecutive ticks asked for it, one level
at a time, so a lane that is breaching passes through lagging on its way back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from config.settings import BurnRule, Settings
from scheduler.slo.burn import BucketWindows
from scheduler.slo.health import LaneHealth
from scheduler.slo.prediction import LanePrediction

State = Literal["healthy", "lagging", "breaching"]
LEVELS: tuple[State, ...] = ("healthy", "lagging", "breaching")


@dataclass(slots=True)
class LaneSloState:
    """A lane's SLO state (healthy, lagging, breaching) and its hysteresis counters (persisted in the
    lane's SLO snapshot)."""

    state: State = "healthy"
    since_ms: int = 0
    calm_ticks: int = 0  # consecutive ticks whose target was better than ``state``

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "since_ms": self.since_ms, "calm_ticks": self.calm_ticks}

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> LaneSloState:
        if not raw or raw.get("state") not in LEVELS:
            return cls()
        return cls(raw["state"], int(raw.get("since_ms", 0)), int(raw.get("calm_ticks", 0)))


def transition(current: LaneSloState, target: State, now_ms: int, recover_ticks: int) -> LaneSloState:
    """The state after a tick whose evidence says ``target``: worse at once, better only when calm."""
    want, have = LEVELS.index(target), LEVELS.index(current.state)
    if want > have:
        return LaneSloState(target, now_ms, 0)
    if want == have:
        return LaneSloState(current.state, current.since_ms, 0)
    calm = current.calm_ticks + 1
    if calm < recover_ticks:
        return LaneSloState(current.state, current.since_ms, calm)
    return LaneSloState(LEVELS[have - 1], now_ms, 0)


def rule_name(rule: BurnRule) -> str:
    """A burn rule's stable name (it is part of the alert's dedup key)."""
    return f"burn_{rule.severity}_{rule.long_window_s:g}s"


@dataclass(slots=True)
class Evidence:
    """What one tick saw of a lane, and the state it points to."""

    at_risk: int = 0  # jobs found at risk this tick (flipped or held by budget)
    late_recent: int = 0  # jobs finished late in the shortest burn window
    slowest_elapsed_s: float = 0.0  # the longest a batch of the lane has been in flight
    latest_turnaround_s: float | None = None
    usual_turnaround_s: float = 0.0
    burn_rates: dict[str, dict[str, float]] = field(default_factory=dict)  # rule -> long/short burn
    firing: list[str] = field(default_factory=list)  # burn rules whose both windows pass the factor
    sync_share: float | None = None
    sync_share_jobs: int = 0
    reasons: list[str] = field(default_factory=list)

    def target(self, settings: Settings) -> State:
        """The state this evidence calls for; the reasons are recorded for alerts and the API."""
        self.reasons = []
        pages = [r for r in settings.slo.burn_rules if r.severity == "page" and rule_name(r) in self.firing]
        if self.at_risk:
            self.reasons.append(f"{self.at_risk} jobs at risk of missing their deadline")
        if self.late_recent:
            self.reasons.append(f"{self.late_recent} jobs finished late")
        if pages:
            self.reasons.append("error budget burning: " + ", ".join(rule_name(r) for r in pages))
        if self.reasons:
            return "breaching"
        limit = settings.slo.lagging_factor * self.usual_turnaround_s
        if self.slowest_elapsed_s > limit:
            self.reasons.append(
                f"a batch in flight for {self.slowest_elapsed_s:.0f}s (usual {self.usual_turnaround_s:.0f}s)"
            )
        elif self.latest_turnaround_s is not None and self.latest_turnaround_s > limit:
            self.reasons.append(
                f"last batch took {self.latest_turnaround_s:.0f}s (usual {self.usual_turnaround_s:.0f}s)"
            )
        return "lagging" if self.reasons else "healthy"


def burn_windows(settings: Settings) -> list[float]:
    """Every window the SLO tracker sums: each rule's long and short window, and the sync-share window."""
    slo = settings.slo
    return sorted(
        {w for r in slo.burn_rules for w in (r.long_window_s, r.short_window_s)} | {slo.sync_share_window_s}
    )


def gather(
    settings: Settings,
    health: LaneHealth,
    prediction: LanePrediction,
    windows: BucketWindows,
    at_risk: int,
) -> Evidence:
    """Evidence for one lane at one tick, from its health, predictions and SLO buckets."""
    slo = settings.slo
    ev = Evidence(at_risk=at_risk, latest_turnaround_s=health.latest_turnaround_s)
    ev.usual_turnaround_s = health.usual_turnaround()
    ev.slowest_elapsed_s = max((b.elapsed_s for b in prediction.batches), default=0.0)
    shortest = min((r.short_window_s for r in slo.burn_rules), default=slo.sync_share_window_s)
    ev.late_recent = windows.sums(shortest).bad if slo.burn_rules else 0
    for rule in slo.burn_rules:
        long_burn = windows.sums(rule.long_window_s).burn_rate(slo.on_time_target)
        short_burn = windows.sums(rule.short_window_s).burn_rate(slo.on_time_target)
        name = rule_name(rule)
        ev.burn_rates[name] = {"long": round(long_burn, 3), "short": round(short_burn, 3)}
        if long_burn >= rule.factor and short_burn >= rule.factor:
            ev.firing.append(name)
    share = windows.sums(slo.sync_share_window_s)
    ev.sync_share, ev.sync_share_jobs = share.sync_share(), share.all
    return ev
