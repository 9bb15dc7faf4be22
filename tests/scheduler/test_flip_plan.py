"""The flip decision as a pure function: last safe moment, drain time, early flips; and the model under it."""

from __future__ import annotations

import math

import pytest

from scheduler.slo.flip_plan import (
    LEAD_TICKS,
    Plan,
    Policy,
    PollState,
    Source,
    SyncLane,
    plan,
    poll_lead_ms,
    pulled_poll_ms,
    safe_horizon_ms,
    sync_rate,
)
from scheduler.slo.survival import TurnaroundModel

NOW = 1_800_000_000_000
POLICY = Policy(risk_probability=0.05, early_probability=0.99, tick_s=1.0)
SYNC = SyncLane(margin_s=10.0, rate_per_s=1.0)


def model(ended, in_flight=(), prior_s=86_400.0):
    return TurnaroundModel.build(ended, in_flight, prior_s=prior_s, window_s=86_400.0, min_samples=5)


def test_sync_rate_is_the_tighter_limit():
    assert sync_rate(None, 16, 2.0) == 8
    assert sync_rate(60, 16, 2.0) == 1
    assert sync_rate(6000, 16, 2.0) == 8


def test_alone_a_job_flips_at_its_deadline_less_margin_and_lead():
    reach = NOW + (LEAD_TICKS * 1.0 + 10.0) * 1000
    assert safe_horizon_ms([], NOW, SYNC, 1.0) == reach + 1000  # + its own 1 s on the sync lane


def test_at_risk_jobs_due_earlier_bring_the_moment_forward():
    """100 at-risk jobs due 200 s from now at 1 a second: the drain takes 100 s, so they flip once
    200 s − margin − lead − drain has come, not at 188 s."""
    due = [NOW + 200_000] * 100
    assert safe_horizon_ms(due, NOW, SYNC, 1.0) < NOW + 200_000
    assert safe_horizon_ms(due, NOW + 88_000, SYNC, 1.0) > NOW + 200_000
    assert safe_horizon_ms(due, NOW + 86_000, SYNC, 1.0) < NOW + 200_000


def test_a_healthy_lane_keeps_its_jobs_on_the_batch():
    """Batches of 4–6 s; one in flight for 9 s with 100 jobs due in 300 s: nothing flips."""
    m = model([4.0, 4.5, 5.0, 5.5, 6.0], [9.0])
    source = Source("b1", NOW - 9_000)
    due = [NOW + 300_000] * 100
    out = plan(m, [source], [due], [], SYNC, POLICY, NOW).horizons
    assert out["b1"] < NOW + 300_000


def test_a_batch_on_time_does_not_load_the_drain():
    """A batch 2 s into a 4–6 s lane: its 10,000 jobs due in 300 s do not make the sync lane look full."""
    m = model([4.0, 4.5, 5.0, 5.5, 6.0], [2.0])
    source = Source("b1", NOW - 2_000)
    due = [NOW + 300_000] * 10_000
    assert plan(m, [source], [due], [], SYNC, POLICY, NOW).horizons["b1"] < NOW + 300_000


def test_an_overdue_batch_loads_the_drain():
    """A batch far past the 95% quantile: all its jobs count at risk, so they flip early enough."""
    m = model([4.0, 4.5, 5.0, 5.5, 6.0])
    source = Source("b1", NOW - 100_000)
    due = [NOW + 150_000] * 200
    assert plan(m, [source], [due], [], SYNC, POLICY, NOW).horizons["b1"] > NOW + 150_000


def test_a_batch_that_almost_surely_misses_flips_early():
    """A lane whose batches take about 10 h: a fresh batch cannot make a deadline in 1 h."""
    m = model([36_000.0 * f for f in (0.9, 0.95, 1.0, 1.05, 1.1)])
    source = Source("b1", NOW)
    due = [NOW + 3_600_000]
    assert plan(m, [source], [due], [], SYNC, POLICY, NOW).horizons["b1"] > NOW + 3_600_000


def test_an_ended_batch_flips_just_in_time_and_the_queue_is_judged_from_the_next_flush():
    m = model([4.0, 4.5, 5.0, 5.5, 6.0])
    ended, queue = Source("b1", NOW - 5_000, ended=True), Source(None, NOW + 60_000)
    out = plan(m, [ended, queue], [[NOW + 100_000], [NOW + 100_000]], [], SYNC, POLICY, NOW).horizons
    assert out["b1"] == NOW + (LEAD_TICKS + 10) * 1000
    assert out[None] < NOW + 100_000


def test_jobs_queued_for_sync_count_in_the_drain():
    m = model([4.0, 4.5, 5.0, 5.5, 6.0])
    source = Source("b1", NOW)
    due = [NOW + 100_000]
    alone = plan(m, [source], [due], [], SYNC, POLICY, NOW).horizons["b1"]
    behind = plan(m, [source], [due], [NOW + 90_000] * 95, SYNC, POLICY, NOW).horizons["b1"]
    assert alone < NOW + 100_000 < behind


def test_kaplan_meier_counts_censored_batches():
    """Two batches still running at 50 s: fewer ends among those at risk, so survival stays higher."""
    ended = [10.0, 20.0, 30.0, 60.0, 70.0]
    assert model(ended, [50.0, 50.0]).sf(55.0) > model(ended).sf(55.0)


def test_the_tail_beyond_the_slowest_batch_is_fitted_not_a_cliff():
    m = model([4.0, 4.5, 5.0, 5.5, 6.0])
    assert 0 < m.sf(7.0) < m.sf(6.0) < 1
    assert m.sf(60.0) < 1e-6
    assert m.quantile_after(9.0, 0.95) < 30.0
    assert m.quantile(0.5) == pytest.approx(5.0, rel=0.05)


def test_a_blind_model_predicts_the_window():
    m = model([], [])
    assert m.blind
    assert m.quantile(0.5) == 86_400.0
    assert m.p_running(10.0, 20.0) == 1.0


def test_far_tails_stay_finite():
    m = model([4.0, 4.5, 5.0, 5.5, 6.0])
    p = m.p_running(1_000.0, 2_000.0)
    assert 0.0 <= p <= 1.0
    assert not math.isnan(p)


def test_a_long_running_batch_keeps_its_jobs_until_their_last_safe_moment_by_default():
    """Batches of 7 min at the median and an hour at p90, and one a minute stalled in flight for 6 h:
    a batch three hours in keeps its jobs due in 30 minutes (at 0.99 "almost sure" it would flip
    them now, and on the outage preset half of such flips were needless)."""
    from statistics import NormalDist

    from config.settings import Settings

    sigma = math.log(60 / 7) / NormalDist().inv_cdf(0.9)
    ended = [420.0 * math.exp(sigma * NormalDist().inv_cdf((i + 0.5) / 200)) for i in range(200)]
    m = model(ended, [60.0 * i for i in range(1, 361)])
    source = Source("b1", NOW - 3 * 3_600_000)
    due = [NOW + 30 * 60_000]
    production = Policy.for_settings(Settings())
    assert plan(m, [source], [due], [], SYNC, production, NOW).horizons["b1"] < due[0]
    eager = Policy(risk_probability=0.05, early_probability=0.99, tick_s=1.0)
    assert plan(m, [source], [due], [], SYNC, eager, NOW).horizons["b1"] > due[0]


@pytest.mark.parametrize(
    ("at_risk", "deadline"),
    [
        ([], NOW + 100_000),  # alone: deadline − lead − margin − its own call
        ([NOW + 50_000] * 30, NOW + 100_000),  # 30 at-risk jobs due before it add their calls
        (
            [NOW + 100_000 + i for i in range(200)],
            NOW + 99_000,
        ),  # 200 due just after it flip first, and it with them
        ([NOW + 300_000], NOW + 100_000),  # one due much later does not move it
    ],
)
def test_a_jobs_first_flip_is_the_first_moment_the_horizon_passes_it(at_risk, deadline):
    plan = Plan({}, at_risk, SYNC, 1.0)
    moment = int(plan.first_flip_ms(deadline))
    assert (
        safe_horizon_ms(at_risk, moment - 1, SYNC, 1.0)
        <= deadline
        < safe_horizon_ms(at_risk, moment + 1, SYNC, 1.0)
    )


def test_a_job_behind_a_crowd_of_at_risk_jobs_flips_with_them():
    """200 at-risk jobs due a second after it, on a sync lane of 1 a second: they must start 200 s
    early, and it goes before them."""
    crowd = [NOW + 100_000 + i for i in range(200)]
    alone = Plan({}, [], SYNC, 1.0).first_flip_ms(NOW + 99_000)
    assert Plan({}, crowd, SYNC, 1.0).first_flip_ms(NOW + 99_000) < alone - 190_000


def test_the_poll_lead_is_a_tick_and_at_least_fifteen_seconds():
    assert poll_lead_ms(1.0) == 15_000
    assert poll_lead_ms(60.0) == 60_000


def polls(next_s, running_seen_s=None, pulled_s=None):
    at = lambda s: None if s is None else NOW + int(s * 1000)  # noqa: E731
    return PollState(NOW, NOW + int(next_s * 1000), at(running_seen_s), at(pulled_s))


def test_a_poll_after_the_last_safe_moment_is_brought_forward_to_a_lead_before_it():
    """Flip at 600 s, next poll at 700 s (or at 590 s, too late for its answer to be in): poll at 585 s."""
    for next_s in (700, 590):
        pulled = pulled_poll_ms(NOW + 600_000, polls(next_s, running_seen_s=400), NOW + 500_000, 15_000)
        assert pulled == NOW + 585_000


def test_a_schedule_that_already_polls_in_time_is_left_alone():
    assert pulled_poll_ms(NOW + 600_000, polls(580, running_seen_s=400), NOW + 500_000, 15_000) is None
    # the last poll came after the lead: the flip is decided on fresh status
    assert pulled_poll_ms(NOW + 600_000, polls(900, running_seen_s=590), NOW + 595_000, 15_000) is None


def test_a_poll_brought_forward_is_asked_for_once():
    """Pulled to 585 s and asked for at that tick: whether or not it was answered, not again."""
    state = polls(585, running_seen_s=400, pulled_s=585)
    assert pulled_poll_ms(NOW + 600_000, state, NOW + 586_000, 15_000) is None


def test_a_flip_already_due_gets_one_poll_now_then_one_a_lead():
    """A job past its moment (held by its budget): poll now; with a poll just brought forward, not
    before a lead."""
    assert (
        pulled_poll_ms(NOW + 600_000, polls(900, running_seen_s=400), NOW + 650_000, 15_000) == NOW + 650_000
    )
    # A batch whose jobs reach their moments one after another: polled once a lead, not every tick.
    later_job = NOW + 640_000
    assert pulled_poll_ms(later_job, polls(900, pulled_s=620), NOW + 621_000, 15_000) == NOW + 635_000
    # A regular poll is no reason to wait: the pulled one goes a lead before the flip.
    assert pulled_poll_ms(later_job, polls(900, running_seen_s=620), NOW + 621_000, 15_000) == NOW + 625_000


def test_a_later_estimate_moves_a_pulled_poll_earlier():
    """More jobs turned at risk: the moment moved from 600 s to 590 s before the pulled poll was taken."""
    state = polls(585, running_seen_s=400, pulled_s=585)
    assert pulled_poll_ms(NOW + 590_000, state, NOW + 560_000, 15_000) == NOW + 575_000


def test_a_batch_about_to_be_judged_late_is_polled_now():
    """Its early-flip horizon a lead from now passes the job: the flip is near, whatever the drain."""
    plan = Plan({}, [], SYNC, 1.0, NOW, {"b1": NOW + 100_000})
    assert plan.first_flip_ms(NOW + 50_000, "b1") == NOW
    assert plan.first_flip_ms(NOW + 150_000, "b1") == NOW + 150_000 - (LEAD_TICKS + 10 + 1) * 1000
