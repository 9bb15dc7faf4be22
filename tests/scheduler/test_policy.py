"""The routing and backoff rules: each decision alone, from plain values (no Redis, no clock)."""

from __future__ import annotations

import math
import random

import pytest

from config.settings import SchedulerSettings
from scheduler.policy import (
    LaneOutlook,
    RetryDecision,
    RetryJob,
    backoff,
    first_poll_s,
    flip_route,
    next_poll_s,
    overdue,
    route_retry,
    scheduled_delay,
)

NOW_MS = 1_800_000_000_000
HOUR_MS = 3600 * 1000
NEEDS_10_MIN = LaneOutlook(NOW_MS, needed_s=600.0)


def job(attempts: int = 0, *, deadline_in_ms: int = HOUR_MS, counted: bool = True) -> RetryJob:
    return RetryJob(attempts, NOW_MS + deadline_in_ms, counted=counted)


def route(j: RetryJob, *, sync_allowed: bool = True, outlook: LaneOutlook = NEEDS_10_MIN) -> RetryDecision:
    return route_retry(j, outlook, sync_allowed, max_attempts=3)


class Draws:
    """A random source that always draws one end of the range, so jittered delays are exact."""

    def __init__(self, end: str) -> None:
        self.end = end

    def uniform(self, a: float, b: float) -> float:
        return a if self.end == "low" else b


# --- route_retry ---------------------------------------------------------------------------------


def test_a_job_with_attempts_and_time_left_goes_back_to_its_lane():
    assert route(job(attempts=1)) == RetryDecision("lane", "retry")


def test_a_job_whose_last_attempt_ended_goes_on_to_sync():
    assert route(job(attempts=2)) == RetryDecision("sync", "attempts_spent")


def test_a_job_another_batch_could_not_serve_in_time_goes_on_to_sync():
    assert route(job(deadline_in_ms=600_000)) == RetryDecision("sync", "deadline")


def test_the_deadline_must_leave_more_than_the_turnaround_the_lane_needs():
    assert route(job(deadline_in_ms=600_001)).target == "lane"
    assert route(job(deadline_in_ms=600_000)).target == "sync"


def test_a_tenant_barred_from_paid_sync_goes_back_to_its_lane_though_its_deadline_may_slip():
    assert route(job(deadline_in_ms=1000), sync_allowed=False) == RetryDecision("lane", "sync_blocked")


def test_a_tenant_barred_from_paid_sync_fails_once_its_attempts_are_used_up():
    """Never paid sync, and never an endless round of batches: a clear failure."""
    assert route(job(attempts=2), sync_allowed=False) == RetryDecision("fail", "budget_spent")


def test_a_barred_tenant_with_attempts_and_time_left_retries_like_any_other():
    assert route(job(attempts=1), sync_allowed=False) == RetryDecision("lane", "retry")


def test_an_attempt_not_counted_never_uses_up_the_attempts():
    assert route(job(attempts=5, counted=False)) == RetryDecision("lane", "retry")


def test_a_lane_that_no_batch_could_serve_in_time_sends_everyone_to_sync():
    decision = route(job(deadline_in_ms=100 * HOUR_MS), outlook=LaneOutlook(NOW_MS, math.inf))
    assert decision == RetryDecision("sync", "deadline")


def test_one_attempt_allowed_means_no_retry_on_the_lane():
    assert route_retry(job(), NEEDS_10_MIN, True, max_attempts=1).target == "sync"


# --- flip_route -----------------------------------------------------------------------------------


def test_a_job_at_risk_flips_to_sync():
    assert flip_route(True) == "sync"


def test_a_job_at_risk_of_a_tenant_barred_from_paid_sync_stays_on_its_lane():
    assert flip_route(False) == "lane"


# --- backoff --------------------------------------------------------------------------------------


def test_backoff_without_jitter_doubles_from_the_base():
    assert [backoff(n, 0.5, 100.0, None) for n in range(4)] == [0.5, 1.0, 2.0, 4.0]


def test_backoff_stops_at_the_cap():
    assert backoff(10, 0.5, 30.0, None) == 30.0


def test_backoff_jitter_spreads_over_the_upper_half_of_the_ceiling():
    assert backoff(2, 1.0, 30.0, Draws("low")) == 2.0
    assert backoff(2, 1.0, 30.0, Draws("high")) == 4.0


def test_backoff_jitter_comes_from_the_random_source_given():
    assert backoff(3, 1.0, 30.0, random.Random(7)) == backoff(3, 1.0, 30.0, random.Random(7))


def test_backoff_treats_a_negative_attempt_as_the_first():
    assert backoff(-1, 0.5, 30.0, None) == 0.5


# --- scheduled_delay ------------------------------------------------------------------------------


def test_a_schedule_gives_the_step_of_the_attempt():
    assert [scheduled_delay([5, 30, 120], n, 0.2, None) for n in (1, 2, 3)] == [5, 30, 120]


def test_a_schedule_used_up_gives_none():
    assert scheduled_delay([5, 30], 3, 0.2, None) is None
    assert scheduled_delay([], 1, 0.2, None) is None


@pytest.mark.parametrize(("end", "expected"), [("low", 24.0), ("high", 36.0)])
def test_a_schedule_step_moves_by_up_to_its_jitter(end: str, expected: float):
    assert scheduled_delay([5, 30], 2, 0.2, Draws(end)) == pytest.approx(expected)


def test_a_schedule_without_jitter_ignores_the_random_source():
    assert scheduled_delay([5, 30], 2, 0.0, Draws("high")) == 30


# --- next_poll_s ----------------------------------------------------------------------------------

POLLS = SchedulerSettings(poll_initial_s=5.0, poll_backoff=2.0, poll_max_s=30.0)


def test_the_first_interval_grows_from_the_initial_one():
    assert next_poll_s(None, POLLS) == 10.0


def test_each_interval_grows_by_the_backoff_factor():
    assert next_poll_s(10.0, POLLS) == 20.0


def test_the_interval_stops_at_the_longest():
    assert next_poll_s(20.0, POLLS) == 30.0
    assert next_poll_s(30.0, POLLS) == 30.0


# --- first_poll_s ---------------------------------------------------------------------------------

FIRST = SchedulerSettings(poll_initial_s=5.0, poll_max_s=300.0, tick_interval_s=1.0)


def test_a_lane_without_history_polls_first_after_the_initial_interval():
    assert first_poll_s([], FIRST) == 5.0


def test_a_fast_lane_polls_first_at_half_its_fastest_turnaround():
    assert first_poll_s([3.0, 9.0, 4.0], FIRST) == 1.5


def test_a_lane_whose_batches_end_at_once_polls_first_after_one_tick():
    assert first_poll_s([0.2, 0.5], FIRST) == 1.0


def test_a_slow_lane_waits_longer_than_the_initial_interval_but_not_past_the_longest():
    assert first_poll_s([120.0, 900.0], FIRST) == 60.0
    assert first_poll_s([3600.0], FIRST) == 300.0


# --- overdue --------------------------------------------------------------------------------------


def test_a_batch_inside_its_window_and_grace_is_not_overdue():
    submitted = NOW_MS - 3000
    assert not overdue(submitted, NOW_MS, completion_window_s=2.0, grace_s=1.0)


def test_a_batch_past_its_window_and_grace_is_overdue():
    submitted = NOW_MS - 3001
    assert overdue(submitted, NOW_MS, completion_window_s=2.0, grace_s=1.0)


def test_a_batch_never_submitted_is_never_overdue():
    assert not overdue(None, NOW_MS, completion_window_s=0.001, grace_s=0.0)
