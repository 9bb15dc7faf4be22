"""Lane health: sample windows bounded by count and age, quantiles, priors until enough samples."""

from __future__ import annotations

import pytest

from config.settings import SloSettings
from scheduler.ledger import keys
from scheduler.ledger.samples import parse_sample, push_sample, sample
from scheduler.slo.health import MIN_TURNAROUND_S, observed_turnaround_s, quantile, read_health
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


async def test_the_prior_gives_way_as_samples_arrive(redis, redis_url):
    """The prior (the planning quantile) stands alone at first, is diluted by each sample, and is gone
    at min_samples."""
    settings = make_settings(redis_url, slo=SloSettings(min_samples=3, prior_turnaround_s=50))
    health = await read_health(redis, settings, LANE, "openai", NOW)
    assert health.turnaround(0.95) == pytest.approx(50, rel=1e-3)
    await push(redis, keys.lane_turnarounds(LANE), [2.0, 3.0])
    health = await read_health(redis, settings, LANE, "openai", NOW)
    assert 3.0 < health.turnaround(0.95) < 50
    await push(redis, keys.lane_turnarounds(LANE), [4.0])
    health = await read_health(redis, settings, LANE, "openai", NOW)
    assert health.turnaround(0.5) == pytest.approx(3.0, rel=1e-3)
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
    """A batch in flight is predicted from the curve beyond its elapsed time; past the slowest batch
    seen, the fitted tail answers, not the window's end."""
    settings = make_settings(redis_url, slo=SloSettings(min_samples=3))
    await push(redis, keys.lane_turnarounds(LANE), [10.0, 20.0, 30.0, 40.0])
    health = await read_health(redis, settings, LANE, "openai", NOW)
    median = health.remaining_after(0, 0.5)
    assert 20.0 < median < 30.0  # between the two middle samples
    assert median < health.remaining_after(25, 0.5) < 40.0
    record_slow = health.remaining_after(45, 0.95)
    assert 45 < record_slow < 200
    assert record_slow < health.window_s


async def test_batches_in_flight_are_censored_samples(redis, redis_url):
    """Batches running longer than most ended ones make the lane's turnaround longer."""
    settings = make_settings(redis_url, slo=SloSettings(min_samples=3))
    await push(redis, keys.lane_turnarounds(LANE), [10.0, 20.0, 30.0, 40.0])
    health = await read_health(redis, settings, LANE, "openai", NOW)
    slow_now = health.with_in_flight([35.0, 35.0, 35.0, 35.0])
    assert slow_now.turnaround(0.5) > health.turnaround(0.5)
    assert slow_now.turnarounds == health.turnarounds


async def test_in_flight_without_history_follows_the_prior(redis, redis_url):
    """A prior of 5 s: a batch past it is predicted from the prior's tail, not the window's end."""
    settings = make_settings(redis_url, slo=SloSettings(prior_turnaround_s=5))
    health = await read_health(redis, settings, LANE, "openai", NOW)
    assert health.remaining_after(0, 0.95) == pytest.approx(5, rel=1e-3)
    assert 6 < health.remaining_after(6, 0.95) < health.window_s


def test_observed_turnaround_is_the_midpoint_of_the_polls_and_never_zero():
    start = NOW
    assert observed_turnaround_s(start, start + 4_000, start + 6_000) == 5.0
    assert observed_turnaround_s(start, None, start + 5_000) == 2.5  # first poll saw it ended
    assert observed_turnaround_s(start, None, start) == MIN_TURNAROUND_S


async def test_sync_margin_from_p99_times_retry_allowance(redis, redis_url):
    slo = SloSettings(min_samples=2, default_sync_latency_s=7, sync_retry_allowance=3)
    settings = make_settings(redis_url, slo=slo)
    health = await read_health(redis, settings, LANE, "openai", NOW)
    assert health.sync_margin() == 21
    await push(redis, keys.lane_sync_latencies(LANE), [1.0, 2.0])
    health = await read_health(redis, settings, LANE, "openai", NOW)
    assert health.sync_margin() == pytest.approx(quantile([1.0, 2.0], 0.99) * 3)


async def test_the_usual_turnaround_is_the_prior_until_history_replaces_it(redis, redis_url):
    """Lagging is judged against the prior itself while history is short, then the history's median."""
    settings = make_settings(redis_url, slo=SloSettings(min_samples=3, prior_turnaround_s=10))
    health = await read_health(redis, settings, LANE, "openai", NOW)
    assert health.usual_turnaround() == 10
    await push(redis, keys.lane_turnarounds(LANE), [2.0, 3.0, 4.0])
    health = await read_health(redis, settings, LANE, "openai", NOW)
    assert health.usual_turnaround() == pytest.approx(3.0, rel=1e-3)


async def test_pushed_samples_are_capped_newest_first_and_read_back(redis, redis_url):
    """push_sample (the one writer) keeps the newest ``history`` entries; parse_sample (the one
    reader) gives back what was written and refuses what it cannot read."""
    key = keys.lane_sync_latencies(LANE)
    for i, seconds in enumerate([1.0, 2.0, 3.0]):
        async with redis.pipeline(transaction=True) as pipe:
            push_sample(pipe, key, NOW + i, seconds, history=2)
            await pipe.execute()
    assert [parse_sample(e) for e in await redis.lrange(key, 0, -1)] == [(NOW + 2, 3.0), (NOW + 1, 2.0)]
    assert parse_sample(b"garbage") is None
    assert parse_sample(b"12:x") is None
    settings = make_settings(redis_url, slo=SloSettings(min_samples=2))
    assert (await read_health(redis, settings, LANE, "openai", NOW + 2)).sync_latencies == (2.0, 3.0)
