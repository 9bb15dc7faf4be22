"""The flush policy as pure functions: given a lane, what it holds and the clock, flush or not, and why.

A lane flushes when it reaches its request or byte cap, when its oldest job has waited
``max_wait``, when one of its cron windows is open, or under deadline pressure (earliest deadline
− now − expected turnaround < two ticks). Outside its cron windows a lane submits nothing unless
a deadline forces it; ``min_batch_requests`` holds a lane whose window is open until ``max_wait``
or a deadline forces it; a lane backed off after a token-limit refusal submits nothing until the
hold ends. Batch discounts do not grow with size, so a flush takes everything queued (in as many
batches as the caps need), except a cap flush, which takes only the full batches and leaves the
rest to fill up.

A flush is cut into deadline bands (:func:`band_limit_ms`): a batch holds jobs due within
``batch_deadline_spread`` times its earliest job's time left, so a batch that runs late puts
(nearly) all its jobs at risk at once. They flip together and the emptied batch is cancelled, rather
than its early jobs flipping while the rest wait and the batch then bills the flipped ones twice. A
batch closed by its band does not count against the batches a decision asks for: a flush takes
its bands until it has made that many batches closed by a cap or by the queue running out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from scheduler.planning import cron
from scheduler.planning.lanes import Lane

Reason = Literal[
    "cap_requests",
    "cap_bytes",
    "max_wait",
    "cron_window",
    "deadline",
    # reasons to hold
    "empty",
    "backoff",
    "outside_window",
    "below_min",
    "waiting",
]

# How many ticks of slack deadline pressure keeps: the batch must be on its way before then.
PRESSURE_TICKS = 2


@dataclass(frozen=True, slots=True)
class LaneBacklog:
    """What a lane holds right now, read from Redis in one round trip."""

    queued: int
    queued_bytes: int  # request body bytes (keys.lane_bytes)
    oldest_arrival_ms: int | None
    earliest_deadline_ms: int | None
    pressured: int = 0  # queued jobs whose deadline falls before now + turnaround + PRESSURE_TICKS ticks
    hold_until_ms: int = 0


@dataclass(frozen=True, slots=True)
class Decision:
    """Flush or hold, why, and how many batches to plan now."""

    flush: bool
    reason: Reason
    batches: int = 0


def pressure_horizon_ms(now: float, turnaround_s: float, tick_s: float) -> int:
    """Jobs with a deadline before this (epoch ms) are under deadline pressure."""
    return int((now + turnaround_s + PRESSURE_TICKS * tick_s) * 1000)


def band_limit_ms(now_ms: int, first_deadline_ms: int, spread: float | None, min_band_s: float) -> int:
    """The latest deadline (epoch ms) a batch whose earliest job is due at ``first_deadline_ms`` holds.

    The band reaches ``spread`` times the earliest job's time left, and at least ``min_band_s`` past
    its deadline (jobs due within minutes of each other are not split into tiny batches).
    ``spread=None`` lifts the bound.
    """
    if spread is None:
        return 2**62
    left_ms = max(0, first_deadline_ms - now_ms)
    return first_deadline_ms + max(int(left_ms * (spread - 1)), int(min_band_s * 1000))


def batches_for(lane: Lane, requests: int, body_bytes: int) -> int:
    """The fewest batches ``requests`` jobs of ``body_bytes`` fit in under the lane's caps."""
    if requests <= 0:
        return 0
    by_requests = math.ceil(requests / lane.max_batch_requests)
    by_bytes = math.ceil(lane.batch_bytes(requests, body_bytes) / lane.max_batch_bytes)
    return max(by_requests, by_bytes, 1)


def full_batches(lane: Lane, state: LaneBacklog) -> int:
    """How many batches the lane can fill to a cap right now (0 when no cap is reached)."""
    by_requests = state.queued // lane.max_batch_requests
    by_bytes = lane.batch_bytes(state.queued, state.queued_bytes) // lane.max_batch_bytes
    return max(by_requests, by_bytes)


def decide(lane: Lane, state: LaneBacklog, now: float, *, tick_s: float, turnaround_s: float) -> Decision:
    """The flush decision for one lane at ``now`` (epoch seconds).

    Args:
        lane: the lane's effective settings.
        state: what it holds.
        now: the clock.
        tick_s: the tick interval (deadline pressure keeps two ticks of slack).
        turnaround_s: the expected batch turnaround for this lane.
    """
    if state.queued <= 0:
        return Decision(False, "empty")
    now_ms = int(now * 1000)
    if state.hold_until_ms > now_ms:
        return Decision(False, "backoff")
    everything = batches_for(lane, state.queued, state.queued_bytes)
    if state.earliest_deadline_ms is not None and (
        state.earliest_deadline_ms / 1000 - now - turnaround_s < PRESSURE_TICKS * tick_s
    ):
        # Only the pressured jobs must go; earliest deadlines are reserved first, and the batches
        # they need are filled up with the next-earliest jobs at no extra cost.
        needed = math.ceil(max(state.pressured, 1) / lane.max_batch_requests)
        return Decision(True, "deadline", min(max(needed, 1), everything))
    in_window = cron.window_open(lane.cron, lane.timezone, lane.cron_window_s, now) if lane.cron else None
    if in_window is False:
        return Decision(False, "outside_window")
    waited = (
        state.oldest_arrival_ms is not None and now_ms - state.oldest_arrival_ms >= lane.max_wait_s * 1000
    )
    if waited:
        return Decision(True, "max_wait", everything)
    full = full_batches(lane, state)
    if full > 0:
        by_bytes = lane.batch_bytes(state.queued, state.queued_bytes) // lane.max_batch_bytes
        reason: Reason = (
            "cap_bytes" if by_bytes >= state.queued // lane.max_batch_requests else "cap_requests"
        )
        return Decision(True, reason, min(full, everything))
    if lane.min_batch_requests is not None and state.queued < lane.min_batch_requests:
        return Decision(False, "below_min")
    if in_window:
        return Decision(True, "cron_window", everything)
    return Decision(False, "waiting")
