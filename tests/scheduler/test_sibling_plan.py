"""The sibling failover decision: when a lane looks for a sibling, and which sibling a job goes to."""

from __future__ import annotations

from scheduler.slo.sibling_plan import LaneLoad, Sibling, destinations, lags, sibling, stalled

NOW = 1_800_000_000_000
FACTOR = 2.0


def load(state: str = "healthy", slowest_s: float = 0.0, held: bool = False, lane: str = "a") -> LaneLoad:
    return LaneLoad(lane, state, usual_turnaround_s=600.0, slowest_elapsed_s=slowest_s, held=held)


def test_a_batch_is_stalled_past_the_lagging_limit():
    assert not stalled(1200.0, 600.0, FACTOR)
    assert stalled(1200.1, 600.0, FACTOR)


def test_a_healthy_lane_with_batches_on_time_keeps_its_jobs():
    assert not lags(load(slowest_s=900.0), FACTOR)


def test_a_lane_lags_when_not_healthy_stalled_or_held():
    assert lags(load(state="lagging"), FACTOR)
    assert lags(load(state="breaching"), FACTOR)
    assert lags(load(slowest_s=1300.0), FACTOR)  # before the state machine has said so
    assert lags(load(held=True), FACTOR)  # its enqueued-token quota is full


def test_a_sibling_takes_flush_lead_turnaround_and_margin():
    dest = sibling(load(lane="b"), FACTOR, turnaround_s=900.0, flip_margin_s=60.0, tick_s=1.0)
    assert dest == Sibling("b", healthy=True, completion_s=2.0 + 900.0 + 60.0)
    assert dest.fits(NOW + 962_000, NOW)
    assert not dest.fits(NOW + 961_999, NOW)


def test_a_lagging_or_held_sibling_is_no_destination():
    assert not sibling(load(state="lagging", lane="b"), FACTOR, 10.0, 1.0, 1.0).healthy
    assert not sibling(load(held=True, lane="b"), FACTOR, 10.0, 1.0, 1.0).healthy


def test_each_job_goes_to_the_first_sibling_in_preference_order_that_fits_it():
    fast_but_sick = Sibling("sick", healthy=False, completion_s=10.0)
    preferred = Sibling("preferred", healthy=True, completion_s=3600.0)
    quicker = Sibling("quicker", healthy=True, completion_s=600.0)
    deadlines = [NOW + 300_000, NOW + 1_800_000, NOW + 7_200_000]
    assert destinations(deadlines, [fast_but_sick, preferred, quicker], NOW) == [None, "quicker", "preferred"]
