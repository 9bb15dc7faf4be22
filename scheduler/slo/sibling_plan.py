"""The sibling failover decision as pure functions: which waiting jobs of a lane move to which sibling.

Sibling lanes serve the same model (``settings.sibling_lanes``, in order of preference). A batch
is *stalled* once in flight ``settings.slo.lagging_factor`` times the turnaround the lane plans
with (its quantile ``settings.slo.turnaround_quantile``; the usual turnaround when that is longer):
the lane state's lagging rule, measured against the planning quantile so that a heavy-tailed
lane's slow-but-usual batches (one in twenty runs past that quantile) are no stalls. A lane *fails over* when it lags (its SLO state is not healthy, or a batch of it is
stalled) or when its enqueued-token quota is full (the lane is held after a token-limit refusal).
Then its queued jobs, and the jobs of its stalled batches, move to the first sibling, in order of
preference, that is healthy (its SLO state healthy, no stalled batch, not held) and whose
predicted completion for a job moved now fits the job's deadline: the sibling's next flush (:data:`flip_plan.LEAD_TICKS` ticks: a moved job
arrived long ago, so the sibling flushes at once) plus its turnaround at the planning quantile
plus its flip margin, so a moved job still has its sync fallback on the sibling. A job no sibling
fits stays, and the flip logic decides it unchanged. A job moves once at most: a sibling that
lags in turn flips it as its own, rather than sending it back to a lane that only looks
healthy because its stalled batches were emptied.

Moving comes before flipping: a job that can still finish by batch on a sibling pays batch price,
not flex's or sync's. :mod:`scheduler.slo.siblings` reads Redis and applies the moves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from scheduler.slo.flip_plan import LEAD_TICKS


@dataclass(frozen=True, slots=True)
class LaneLoad:
    """What the failover decision needs to know of a lane at one tick."""

    lane: str
    state: str  # its SLO state: healthy, lagging, breaching
    stall_after_s: float  # a batch in flight longer than this is stalled (:func:`stall_limit_s`)
    slowest_elapsed_s: float  # the longest one of its batches has been in flight
    held: bool  # its quota is full: held after a token-limit refusal


@dataclass(frozen=True, slots=True)
class Sibling:
    """A sibling lane as a destination: whether it is healthy, and how long a moved job takes there."""

    lane: str
    healthy: bool
    completion_s: float  # a job moved now is done this long from now (flush + turnaround + margin)

    def fits(self, deadline_ms: int, now_ms: int) -> bool:
        """Whether a job due at ``deadline_ms`` moved now finishes on this sibling in time."""
        return self.healthy and now_ms + self.completion_s * 1000 <= deadline_ms


def stall_limit_s(usual_turnaround_s: float, planning_turnaround_s: float, lagging_factor: float) -> float:
    """How long a batch may be in flight before it counts as stalled."""
    return lagging_factor * max(usual_turnaround_s, planning_turnaround_s)


def lags(load: LaneLoad) -> bool:
    """Whether a lane's waiting jobs should look for a sibling: not healthy, a batch stalled, or held."""
    return load.state != "healthy" or load.held or load.slowest_elapsed_s > load.stall_after_s


def sibling(load: LaneLoad, turnaround_s: float, flip_margin_s: float, tick_s: float) -> Sibling:
    """``load``'s lane as a destination, with its turnaround at the planning quantile and flip margin."""
    return Sibling(
        load.lane,
        healthy=not lags(load),
        completion_s=LEAD_TICKS * tick_s + turnaround_s + flip_margin_s,
    )


def destinations(deadlines: Sequence[int], siblings: Sequence[Sibling], now_ms: int) -> list[str | None]:
    """Per job (by deadline), the first sibling in order of preference that fits it; None: it stays."""
    healthy = [s for s in siblings if s.healthy]
    return [next((s.lane for s in healthy if s.fits(d, now_ms)), None) for d in deadlines]
