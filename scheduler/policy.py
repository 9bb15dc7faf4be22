"""Every routing and backoff decision, as pure functions of plain values and settings.

Where a job goes when its batch attempt ends without an answer (:func:`route_retry`: back to its
lane, on to sync, or failed), the same rule seen from a flip (:func:`flip_route`), how long to wait
before another try (:func:`backoff`, :func:`scheduled_delay`), when to poll a batch next
(:func:`first_poll_s`, :func:`next_poll_s`) and when to give up on one (:func:`overdue`). Workers and the scheduler read
what these need from Redis and the clock, and apply what they return; nothing here does I/O, so
each rule has its own small test (tests/scheduler/test_policy.py), like :func:`scheduler.planner.decide`.
Jitter is explicit: a caller passes the random source, or ``None`` for none.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from config.settings import SchedulerSettings

RetryTarget = Literal["lane", "sync", "fail"]
RetryReason = Literal[
    "retry",  # lane: attempts and the deadline allow another batch
    "attempts_spent",  # sync: the batch attempts are used up
    "deadline",  # sync: another batch could not end in time
    "sync_blocked",  # lane: paid sync is barred (batch_only budget spent); the deadline may slip
    "budget_spent",  # fail: attempts used up and paid sync barred
]

# The error a job fails with when its batch attempts are used up and its tenant may not pay for sync.
SYNC_BLOCKED_ERROR = {
    "type": "budget_exhausted",
    "code": "sync_blocked",
    "message": "batch attempts used up and the tenant's batch_only budget is spent: no paid sync",
}


class Jitter(Protocol):
    """A random source (``random.Random``): jitter comes only from what the caller passes."""

    def uniform(self, a: float, b: float) -> float: ...


@dataclass(frozen=True, slots=True)
class RetryJob:
    """What the retry rule needs of a job whose batch attempt ended without an answer."""

    attempts: int  # batch attempts used before the one that just ended
    deadline_ms: int
    counted: bool = True  # the ended attempt counts (a flip leaves a batch without using one)


@dataclass(frozen=True, slots=True)
class LaneOutlook:
    """What the retry rule needs of the lane: the clock and what another batch attempt needs."""

    now_ms: int
    # Seconds another batch attempt needs before the deadline: expected turnaround plus the sync
    # margin (:func:`scheduler.prediction.expected_turnaround_s`); ``math.inf``: none could end in time.
    needed_s: float


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """Where the job goes and why."""

    target: RetryTarget
    reason: RetryReason


def route_retry(
    job: RetryJob, health: LaneOutlook, sync_allowed: bool, *, max_attempts: int
) -> RetryDecision:
    """Back to the lane while attempts and the deadline allow another batch, else on to sync; a
    tenant barred from paid sync (``sync_allowed`` false) goes back to the lane while it has attempts
    left, its deadline may slip, and fails with :data:`SYNC_BLOCKED_ERROR` once they are used up.

    Args:
        job: the job's attempts and deadline.
        health: the clock and what another batch attempt needs.
        sync_allowed: whether the job's tenant may be sent to paid sync (not a spent ``batch_only``).
        max_attempts: ``scheduler.max_attempts``.
    """
    tries = job.attempts + 1 if job.counted else job.attempts
    attempts_left = not job.counted or tries < max_attempts
    room_ms = job.deadline_ms - health.now_ms
    in_time = room_ms > health.needed_s * 1000
    if attempts_left and in_time:
        return RetryDecision("lane", "retry")
    if sync_allowed:
        return RetryDecision("sync", "deadline" if attempts_left else "attempts_spent")
    if attempts_left:
        return RetryDecision("lane", "sync_blocked")
    return RetryDecision("fail", "budget_spent")


def flip_route(sync_allowed: bool) -> Literal["lane", "sync"]:
    """Where a job at risk goes (a flip, or intake's "no batch could make it"): the retry rule with
    no batch able to end in time and no attempt used, so sync, or the lane for a tenant barred
    from paid sync."""
    at_risk = RetryJob(attempts=0, deadline_ms=0, counted=False)
    decision = route_retry(at_risk, LaneOutlook(0, math.inf), sync_allowed, max_attempts=1)
    return "sync" if decision.target == "sync" else "lane"


def backoff(attempt: int, base: float, cap: float, rng: Jitter | None) -> float:
    """Seconds before retry number ``attempt + 1`` (``attempt`` counts from 0): ``base`` doubling
    each try up to ``cap``; with ``rng``, equal jitter (a uniform draw in the upper half), so
    retries that failed together spread out; without, exactly the ceiling."""
    ceiling = min(cap, base * 2.0 ** max(0, attempt))
    if rng is None:
        return ceiling
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


def scheduled_delay(
    schedule: Sequence[float], attempts: int, jitter: float, rng: Jitter | None
) -> float | None:
    """Seconds before the next try after ``attempts`` failed ones, from a configured schedule
    (webhooks, alerts), each step moved by up to ± ``jitter`` of itself; ``None`` once the
    schedule is used up (the caller dead-letters)."""
    if attempts < 1 or attempts > len(schedule):
        return None
    step = schedule[attempts - 1]
    if rng is None or jitter <= 0:
        return step
    return step * (1 + rng.uniform(-jitter, jitter))


# The first poll of a new batch comes after this share of the lane's fastest recent turnaround: early
# enough to see a batch as fast as the fastest end soon after, late enough not to poll a slow lane
# blind. A first poll that sees the batch ended teaches a turnaround of half its interval (the
# midpoint rule), so a lane whose batches end at once walks its first poll down to the tick.
FIRST_POLL_SHARE = 0.5


def first_poll_s(turnarounds_s: Sequence[float], scheduler: SchedulerSettings) -> float:
    """Seconds from a batch's submission to its first poll, from its lane's recent turnarounds:
    ``poll_initial_s`` with no history, else ``FIRST_POLL_SHARE`` of the fastest, at least a tick
    (polls are handed out by the tick) and at most ``poll_max_s``."""
    if not turnarounds_s:
        return scheduler.poll_initial_s
    wanted = FIRST_POLL_SHARE * min(turnarounds_s)
    return min(max(wanted, scheduler.tick_interval_s), scheduler.poll_max_s)


def next_poll_s(previous_s: float | None, scheduler: SchedulerSettings) -> float:
    """The interval to the next poll of a batch still running: the last one times
    ``poll_backoff`` (``poll_initial_s`` before any), at most ``poll_max_s``."""
    last = previous_s or scheduler.poll_initial_s
    return min(last * scheduler.poll_backoff, scheduler.poll_max_s)


def overdue(submitted_ms: int | None, now_ms: int, completion_window_s: float, grace_s: float) -> bool:
    """Whether a batch still running has outlived its provider's completion window plus the grace
    (some providers, Azure's Global Batch for one, never expire a batch by themselves)."""
    if submitted_ms is None:
        return False
    return now_ms - submitted_ms > (completion_window_s + grace_s) * 1000
