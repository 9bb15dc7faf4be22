"""Predicted completion: queued jobs wait for the next flush plus turnaround; batches in flight by elapsed time."""

from __future__ import annotations

import pytest

from config.settings import LaneSettings, SloSettings
from scheduler.ledger.ledger import Ledger
from scheduler.slo.health import read_health
from scheduler.slo.prediction import expected_turnaround_s, flush_lead_s, live_batches, predict_lane
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
    assert abs(prediction.queued_completion_ms - (NOW + 40_000)) < 10  # + the prior, 10 s


async def test_deadline_pressure_brings_the_flush_forward(redis, redis_url):
    """The earliest deadline pulls the flush to its deadline minus the flush lead, as the planner does."""
    settings = slo_settings(redis_url, max_wait=600)
    await enqueue(Ledger(redis), NOW, [60])
    health = await read_health(redis, settings, LANE, "openai", NOW)
    prediction = await predict_lane(redis, settings, health, [], NOW)
    lead = flush_lead_s(health, settings)
    assert expected_turnaround_s(health, settings) == pytest.approx(14, rel=1e-3)
    assert prediction.next_flush_ms == NOW + 60_000 - int(lead * 1000)


async def test_an_overdue_lane_flushes_now(redis, redis_url):
    settings = slo_settings(redis_url, max_wait=1)
    await enqueue(Ledger(redis), NOW, [3600])
    health = await read_health(redis, settings, LANE, "openai", NOW)
    prediction = await predict_lane(redis, settings, health, [], NOW + 60_000)
    assert prediction.next_flush_ms == NOW + 60_000


async def test_batch_in_flight_past_its_prior_is_judged_by_the_prior_tail(redis, redis_url):
    """Past its prior a batch is predicted to end a little later, not at the window's end; it counts
    as a censored sample of the lane's model."""
    settings = slo_settings(redis_url)
    await enqueue(Ledger(redis), NOW, [3600])
    batch_id = await submitted_batch(redis, settings, NOW)
    live = await live_batches(redis)
    assert [b.id for b in live[LANE]] == [batch_id]
    health = await read_health(redis, settings, LANE, "openai", NOW)
    fresh = await predict_lane(redis, settings, health, live[LANE], NOW)
    assert abs(fresh.batches[0].predicted_end_ms - (NOW + 10_000)) < 10  # the prior, 10 s
    late = await predict_lane(redis, settings, health, live[LANE], NOW + 11_000)
    assert NOW + 11_000 < late.batches[0].predicted_end_ms < NOW + 120_000
    assert late.oldest_completion_ms() == late.batches[0].predicted_end_ms
    assert late.health.in_flight == (11.0,)


async def test_sync_rate_and_flip_margin_from_the_provider_limits(redis, redis_url):
    """The provider's sync_rpm caps the drain rate; flex adds its latency to the flip margin."""
    base = slo_settings(redis_url)
    provider = base.providers["openai"].model_copy(
        update={"sync_rpm": 600, "sync_concurrency": 100, "flex": True, "flex_latency_s": 30}
    )
    settings = base.model_copy(update={"providers": {"openai": provider}})
    health = await read_health(redis, settings, LANE, "openai", NOW)
    prediction = await predict_lane(redis, settings, health, [], NOW)
    assert prediction.sync_rate_per_s == 10  # 600 a minute; 100 calls of 2 s would allow 50/s
    assert prediction.flip_margin_s == 4 + 30
