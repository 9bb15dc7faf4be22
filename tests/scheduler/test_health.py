"""Lane health: sample windows bounded by count and age, quantiles, priors until enough samples."""

from __future__ import annotations

import pytest

from config.settings import SloSettings
from scheduler import keys
from scheduler.health import quantile, read_health, sample
from tests.conftest import make_settings

LANE = "openai:gpt-4o-mini:/v1/chat/completions"
NOW = 1_800_000_000_000


async def push(redis, key, seconds, end_ms=NOW):
    for s in seconds:
        await redis.lpush(key, sample(end_ms, s))


def test_quantile_interpolates_between_ranks():
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert quantile(values, 0.0) == 1.0
    assert quantile(values, 0.5) == 3.0
    assert quantile(values, 1.0) == 5.0
    assert quantile(values, 0.95) == pytest.approx(4.8)


async def test_prior_until_enough_samples(redis, redis_url):
    """With fewer than min_samples turnarounds, the prior stands; then the history does."""
    settings = make_settings(redis_url, slo=SloSettings(min_samples=3, prior_turnaround_s=50))
    await push(redis, keys.lane_turnarounds(LANE), [2.0, 3.0])
    health = await read_health(redis, settings, LANE, "openai", NOW)
    assert health.turnaround(0.95) == 50
    await push(redis, keys.lane_turnarounds(LANE), [4.0])
    health = await read_health(redis, settings, LANE, "openai", NOW)
    assert health.turnaround(0.5) == 3.0
    assert health.latest_turnaround_s == 4.0


async def test_prior_defaults_to_the_completion_window(redis, settings):
    health = await read_health(redis, settings, LANE, "openai", NOW)
    assert health.turnaround(0.95) == settings.providers["openai"].completion_window_s


async def test_window_bounded_by_count_and_age(redis, redis_url):
    settings = make_settings(redis_url, slo=SloSettings(history_size=3, history_max_age_s=60, min_samples=1))
    key = keys.lane_turnarounds(LANE)
    await push(redis, key, [1000.0], end_ms=NOW - 120_000)  # too old
    await push(redis, key, [1.0, 2.0, 3.0, 4.0])  # newest first: 4, 3, 2 kept
    await redis.lpush(key, b"garbage")
    health = await read_health(redis, settings, LANE, "openai", NOW)
    assert health.turnarounds == (3.0, 4.0)  # the garbage entry took one of the three places


async def test_in_flight_conditioned_on_elapsed(redis, redis_url):
    """A batch in flight is predicted from the samples longer than its elapsed time, else the window's end."""
    settings = make_settings(redis_url, slo=SloSettings(min_samples=3))
    await push(redis, keys.lane_turnarounds(LANE), [10.0, 20.0, 30.0, 40.0])
    health = await read_health(redis, settings, LANE, "openai", NOW)
    assert health.remaining_after(0, 1.0) == 40.0
    assert health.remaining_after(25, 0.0) == 30.0
    assert health.remaining_after(45, 0.95) == health.window_s


async def test_in_flight_without_history_uses_the_prior_then_the_window(redis, redis_url):
    settings = make_settings(redis_url, slo=SloSettings(prior_turnaround_s=5))
    health = await read_health(redis, settings, LANE, "openai", NOW)
    assert health.remaining_after(1, 0.95) == 5
    assert health.remaining_after(6, 0.95) == health.window_s


async def test_sync_margin_from_p99_times_retry_allowance(redis, redis_url):
    slo = SloSettings(min_samples=2, default_sync_latency_s=7, sync_retry_allowance=3)
    settings = make_settings(redis_url, slo=slo)
    health = await read_health(redis, settings, LANE, "openai", NOW)
    assert health.sync_margin() == 21
    await push(redis, keys.lane_sync_latencies(LANE), [1.0, 2.0])
    health = await read_health(redis, settings, LANE, "openai", NOW)
    assert health.sync_margin() == pytest.approx(quantile([1.0, 2.0], 0.99) * 3)
