"""The flush policy: each trigger alone flushes, and nothing else does."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from config.settings import LaneSettings
from scheduler.planning.lanes import LINE_OVERHEAD_BYTES, Lane, effective
from scheduler.planning.planner import LaneBacklog, band_limit_ms, batches_for, decide
from tests.conftest import make_settings

NOW = datetime(2026, 3, 9, 12, 0, tzinfo=UTC).timestamp()
NOW_MS = int(NOW * 1000)
TICK = 1.0
TURNAROUND = 60.0
HOUR_MS = 3600 * 1000


def lane(**overrides: object) -> Lane:
    settings = make_settings(
        "redis://unused",
        lanes={"openai:m:/v1/chat/completions": LaneSettings.model_validate(overrides)},
    )
    return effective(settings, "openai", "m", "/v1/chat/completions")


def state(
    queued: int = 10, *, body: int = 100, age_s: float = 1.0, deadline_in_s: float = 3600, **kw: int
) -> LaneBacklog:
    return LaneBacklog(
        queued=queued,
        queued_bytes=queued * body,
        oldest_arrival_ms=NOW_MS - int(age_s * 1000) if queued else None,
        earliest_deadline_ms=NOW_MS + int(deadline_in_s * 1000) if queued else None,
        **kw,
    )


def run(ln: Lane, st: LaneBacklog, now: float = NOW):
    return decide(ln, st, now, tick_s=TICK, turnaround_s=TURNAROUND)


def test_nothing_triggers_below_caps_before_max_wait_far_from_deadline() -> None:
    d = run(lane(max_batch_requests=100, max_wait=60), state(10, age_s=59))
    assert (d.flush, d.reason) == (False, "waiting")


def test_empty_lane_holds() -> None:
    assert run(lane(), state(0)).reason == "empty"


def test_request_cap_flushes_only_full_batches() -> None:
    d = run(lane(max_batch_requests=100, max_wait=60), state(250))
    assert (d.flush, d.reason, d.batches) == (True, "cap_requests", 2)


def test_byte_cap_flushes() -> None:
    cap = 10 * (1000 + LINE_OVERHEAD_BYTES)
    d = run(lane(max_batch_requests=1000, max_batch_bytes=cap, max_wait=60), state(10, body=1000))
    assert (d.flush, d.reason, d.batches) == (True, "cap_bytes", 1)
    below = run(lane(max_batch_requests=1000, max_batch_bytes=cap + 1000, max_wait=60), state(10, body=1000))
    assert not below.flush


def test_max_wait_flushes_everything() -> None:
    d = run(lane(max_batch_requests=100, max_wait=60), state(250, age_s=60))
    assert (d.flush, d.reason, d.batches) == (True, "max_wait", 3)


def test_deadline_pressure_flushes_the_pressured_jobs() -> None:
    # earliest deadline - now - turnaround = 61.5 - 60 = 1.5 s < two ticks
    d = run(lane(max_batch_requests=100, max_wait=600), state(250, deadline_in_s=61.5, pressured=120))
    assert (d.flush, d.reason, d.batches) == (True, "deadline", 2)
    # 62.5 - 60 = 2.5 s of slack: no pressure yet
    assert not run(lane(max_batch_requests=1000, max_wait=600), state(250, deadline_in_s=62.5)).flush


def test_cron_window_flushes_inside_and_holds_outside() -> None:
    ln = lane(max_batch_requests=1000, max_wait=600, cron=["0 12 * * *"], cron_window_s=600, timezone="UTC")
    assert run(ln, state(5)).reason == "cron_window"
    later = NOW + 3600
    held = decide(ln, state(5, deadline_in_s=86400), later, tick_s=TICK, turnaround_s=TURNAROUND)
    assert (held.flush, held.reason) == (False, "outside_window")


def test_cron_window_dst_new_york() -> None:
    """09:00 New York: open at 13:05 UTC after the spring change, not before it."""
    ln = lane(
        max_batch_requests=1000,
        max_wait=86400,
        cron=["0 9 * * *"],
        cron_window_s=600,
        timezone="America/New_York",
    )
    after = datetime(2026, 3, 9, 13, 5, tzinfo=UTC).timestamp()
    before = datetime(2026, 3, 6, 13, 5, tzinfo=UTC).timestamp()
    st = state(5, deadline_in_s=30 * 86400)
    assert decide(ln, st, after, tick_s=TICK, turnaround_s=TURNAROUND).reason == "cron_window"
    assert decide(ln, st, before, tick_s=TICK, turnaround_s=TURNAROUND).reason == "outside_window"


def test_outside_window_caps_and_max_wait_do_not_flush_but_deadlines_do() -> None:
    ln = lane(max_batch_requests=10, max_wait=60, cron=["0 3 * * *"], cron_window_s=600, timezone="UTC")
    assert run(ln, state(50, age_s=3600)).reason == "outside_window"
    assert run(ln, state(50, deadline_in_s=61, pressured=5)).reason == "deadline"


def test_min_batch_holds_a_window_until_max_wait() -> None:
    ln = lane(
        max_batch_requests=1000, max_wait=600, min_batch_requests=50, cron=["0 12 * * *"], cron_window_s=600
    )
    assert run(ln, state(5, age_s=10)).reason == "below_min"
    assert run(ln, state(5, age_s=600)).reason == "max_wait"
    assert run(ln, state(5, deadline_in_s=61, pressured=5)).reason == "deadline"


def test_backoff_holds_even_under_pressure() -> None:
    d = run(lane(), state(10, deadline_in_s=1, hold_until_ms=NOW_MS + 1000))
    assert (d.flush, d.reason) == (False, "backoff")


def test_caps_never_exceed_the_provider_limit() -> None:
    ln = lane(max_batch_requests=10_000_000)
    assert ln.max_batch_requests == 50_000


@pytest.mark.parametrize(
    ("requests", "body", "expected"), [(0, 0, 0), (1, 10, 1), (100, 10, 1), (101, 10, 2)]
)
def test_batches_for(requests: int, body: int, expected: int) -> None:
    ln = lane(max_batch_requests=100)
    assert batches_for(ln, requests, requests * body) == expected


HOUR_MS = 3_600_000


@pytest.mark.parametrize(
    ("first_left_h", "expected_h"),
    [
        (4, 5),  # 4 h left × 1.25
        (20, 25),
        (1, 1.5),  # a quarter of an hour is narrower than the half-hour floor
        (-1, -0.5),  # already overdue: the floor alone
    ],
)
def test_band_reaches_the_spread_of_the_earliest_jobs_time_left(
    first_left_h: float, expected_h: float
) -> None:
    now = 1_800_000_000_000
    limit = band_limit_ms(now, now + int(first_left_h * HOUR_MS), 1.25, 1800)
    assert limit == now + int(expected_h * HOUR_MS)


def test_no_spread_no_band() -> None:
    assert band_limit_ms(0, HOUR_MS, None, 1800) >= 2**62
