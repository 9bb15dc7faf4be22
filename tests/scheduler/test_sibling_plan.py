"""The sibling failover decision: when a lane looks for a sibling, and which sibling a job goes to."""

from __future__ import annotations

from scheduler.slo.sibling_plan import LaneLoad, Sibling, destinations, lags, sibling, stall_limit_s

NOW = 1_800_000_000_000
FACTOR = 2.0


def load(state: str = "healthy", slowest_s: float = 0.0, held: bool = False, lane: str = "a") -> LaneLoad:
    return LaneLoad(lane, state, stall_after_s=1200.0, slowest_elapsed_s=slowest_s, held=held)


def test_a_batch_stalls_at_the_lagging_factor_times_the_planning_turnaround():
    """Median 5 min, planning quantile 20 min (a heavy tail): stalled past 40 min, not past 10."""
    assert stall_limit_s(300.0, 1200.0, FACTOR) == 2400.0
    assert stall_limit_s(300.0, 200.0, FACTOR) == 600.0  # the usual turnaround, when longer


def test_a_healthy_lane_with_batches_on_time_keeps_its_jobs():
    assert not lags(load(slowest_s=1200.0))


def test_a_lane_lags_when_not_healthy_stalled_or_held():
    assert lags(load(state="lagging"))
    assert lags(load(state="breaching"))
    assert lags(load(slowest_s=1200.1))  # before the state machine has said so
    assert lags(load(held=True))  # its enqueued-token quota is full


def test_a_sibling_takes_flush_lead_turnaround_and_margin():
    dest = sibling(load(lane="b"), turnaround_s=900.0, flip_margin_s=60.0, tick_s=1.0)
    assert dest == Sibling("b", healthy=True, completion_s=2.0 + 900.0 + 60.0)
    assert dest.fits(NOW + 962_000, NOW)
    assert not dest.fits(NOW + 961_999, NOW)


def test_a_lagging_stalled_or_held_sibling_is_no_destination():
    assert not sibling(load(state="lagging", lane="b"), 10.0, 1.0, 1.0).healthy
    assert not sibling(load(slowest_s=5000.0, lane="b"), 10.0, 1.0, 1.0).healthy
    assert not sibling(load(held=True, lane="b"), 10.0, 1.0, 1.0).healthy


def test_each_job_goes_to_the_first_sibling_in_preference_order_that_fits_it():
    fast_but_sick = Sibling("sick", healthy=False, completion_s=10.0)
    preferred = Sibling("preferred", healthy=True, completion_s=3600.0)
    quicker = Sibling("quicker", healthy=True, completion_s=600.0)
    deadlines = [NOW + 300_000, NOW + 1_800_000, NOW + 7_200_000]
    assert destinations(deadlines, [fast_but_sick, preferred, quicker], NOW) == [None, "quicker", "preferred"]
