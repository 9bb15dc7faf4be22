"""The sibling failover decision as pure functions: which waiting jobs of a lane move to which sibling.

Sibling lanes serve the same model (``settings.sibling_lanes``, in order of preference). A lane
*fails over* when it lags (its SLO state is not healthy, or a batch of it is in flight longer
than ``settings.slo.lagging_factor`` times its usual turnaround: the lane state's own lagging
rule) or when its enqueued-token quota is full (the lane is held after a token-limit refusal).
Then its queued jobs, and the jobs of its *stalled* batches (in flight past that same limit),
move to the first sibling, in order of preference, that is healthy (its SLO state healthy, not
lagging by the same rule, not held) and whose predicted completion for a job moved now fits the
job's deadline: the sibling's next flush (:data:`flip_plan.LEAD_TICKS` ticks: a moved job
arrived long ago, so the sibling flushes at once) plus its turnaround at the planning quantile
plus its flip margin, so a moved job still has its sync fallback on the sibling. A job no sibling
fits stays, and the flip logic decides it unchanged.

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
    usual_turnaround_s: float  # what "lagging" is measured against (the lane state's median)
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


def stalled(elapsed_s: float, usual_turnaround_s: float, lagging_factor: float) -> bool:
    """A batch in flight ``elapsed_s`` is stalled once past the lane state's lagging limit."""
    return elapsed_s > lagging_factor * usual_turnaround_s


def lags(load: LaneLoad, lagging_factor: float) -> bool:
    """Whether a lane's waiting jobs should look for a sibling: not healthy, lagging now, or held."""
    return (
        load.state != "healthy"
        or load.held
        or stalled(load.slowest_elapsed_s, load.usual_turnaround_s, lagging_factor)
    )


def sibling(
    load: LaneLoad, lagging_factor: float, turnaround_s: float, flip_margin_s: float, tick_s: float
) -> Sibling:
    """``load``'s lane as a destination, with its turnaround at the planning quantile and flip margin."""
    return Sibling(
        load.lane,
        healthy=not lags(load, lagging_factor),
        completion_s=LEAD_TICKS * tick_s + turnaround_s + flip_margin_s,
    )


def destinations(deadlines: Sequence[int], siblings: Sequence[Sibling], now_ms: int) -> list[str | None]:
    """Per job (by deadline), the first sibling in order of preference that fits it; None: it stays."""
    healthy = [s for s in siblings if s.healthy]
    return [next((s.lane for s in healthy if s.fits(d, now_ms)), None) for d in deadlines]
