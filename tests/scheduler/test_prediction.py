"""Predicted completion: queued jobs wait for the next flush plus turnaround; batches in flight by elapsed time."""

from __future__ import annotations

from config.settings import LaneSettings, SloSettings
from scheduler.health import read_health
from scheduler.ledger import Ledger
from scheduler.prediction import expected_turnaround_s, flush_lead_s, live_batches, predict_lane
from tests.conftest import make_settings
from tests.scheduler.slo_support import LANE, enqueue, submitted_batch

NOW = 1_800_000_000_000


def slo_settings(redis_url, **lane):
    return make_settings(
        redis_url,
        slo=SloSettings(prior_turnaround_s=10, default_sync_latency_s=2, sync_retry_allowance=2),
        lanes={LANE: LaneSettings(**lane)} if lane else {},
    )


async def test_queued_jobs_wait_for_max_wait_then_turnaround(redis, redis_url):
    settings = slo_settings(redis_url, max_wait=30)
    await enqueue(Ledger(redis), NOW, [3600, 7200])
    health = await read_health(redis, settings, LANE, "openai", NOW)
    prediction = await predict_lane(redis, settings, health, [], NOW + 5_000)
    assert prediction.next_flush_ms == NOW + 30_000
    assert prediction.queued_completion_ms == NOW + 40_000
    assert prediction.queued_horizon_ms == NOW + 44_000  # + sync margin 2 s x 2


async def test_deadline_pressure_brings_the_flush_forward(redis, redis_url):
    """The earliest deadline pulls the flush to its deadline minus the flush lead, as the planner does."""
    settings = slo_settings(redis_url, max_wait=600)
    await enqueue(Ledger(redis), NOW, [60])
    health = await read_health(redis, settings, LANE, "openai", NOW)
    prediction = await predict_lane(redis, settings, health, [], NOW)
    lead = flush_lead_s(health, settings)
    assert expected_turnaround_s(health, settings) == 14
    assert prediction.next_flush_ms == NOW + 60_000 - int(lead * 1000)
    assert prediction.queued_horizon_ms is not None
    assert prediction.queued_horizon_ms < NOW + 60_000  # the earliest job is not at risk


async def test_an_overdue_lane_flushes_now(redis, redis_url):
    settings = slo_settings(redis_url, max_wait=1)
    await enqueue(Ledger(redis), NOW, [3600])
    health = await read_health(redis, settings, LANE, "openai", NOW)
    prediction = await predict_lane(redis, settings, health, [], NOW + 60_000)
    assert prediction.next_flush_ms == NOW + 60_000


async def test_batch_in_flight_past_its_prior_runs_to_the_window_end(redis, redis_url):
    settings = slo_settings(redis_url)
    await enqueue(Ledger(redis), NOW, [3600])
    batch_id = await submitted_batch(redis, settings, NOW)
    live = await live_batches(redis)
    assert [b.id for b in live[LANE]] == [batch_id]
    health = await read_health(redis, settings, LANE, "openai", NOW)
    early = await predict_lane(redis, settings, health, live[LANE], NOW + 3_000)
    assert early.batches[0].predicted_end_ms == NOW + 10_000
    late = await predict_lane(redis, settings, health, live[LANE], NOW + 11_000)
    assert late.batches[0].predicted_end_ms == NOW + int(health.window_s * 1000)
    assert late.oldest_completion_ms() == late.batches[0].predicted_end_ms
