"""The sync lane's shared per-provider limits: concurrency slots, requests per minute, provider holds."""

from __future__ import annotations

import asyncio
import time

import pytest

from config.settings import ProviderSettings
from scheduler.ledger import keys
from scheduler.ledger.clock import ManualClock, server_ms
from workers.sync_limits import Permit, SyncLimits, estimate_tokens, reset_seconds, slot_ttl_s

NOW = 1_800_000_000_000
BODY = b'{"model":"m","messages":[],"max_tokens":100}'


def provider(**limits):
    return ProviderSettings(kind="openai", base_url="http://127.0.0.1:9/v1", **limits)


async def test_concurrency_slots_are_shared_and_released(redis):
    limits = SyncLimits(redis)
    config = provider(sync_concurrency=2)
    first = await limits.acquire("openai", config, BODY, NOW)
    second = await limits.acquire("openai", config, BODY, NOW)
    assert isinstance(first, Permit)
    assert isinstance(second, Permit)
    assert not isinstance(await limits.acquire("openai", config, BODY, NOW), Permit)
    await limits.release(first)
    assert isinstance(await limits.acquire("openai", config, BODY, NOW), Permit)


async def test_requests_per_minute(redis):
    limits = SyncLimits(redis)
    config = provider(sync_rpm=2, sync_concurrency=100)
    assert isinstance(await limits.acquire("openai", config, BODY, NOW), Permit)
    assert isinstance(await limits.acquire("openai", config, BODY, NOW), Permit)
    wait = await limits.acquire("openai", config, BODY, NOW)
    assert isinstance(wait, float)
    assert 0 < wait <= 60
    assert isinstance(await limits.acquire("openai", config, BODY, NOW + 60_000), Permit)


async def test_tokens_per_minute(redis):
    limits = SyncLimits(redis)
    config = provider(sync_tpm=150, sync_concurrency=100)
    assert isinstance(await limits.acquire("openai", config, BODY, NOW), Permit)
    assert not isinstance(await limits.acquire("openai", config, BODY, NOW), Permit)


async def test_spent_rate_limit_headers_hold_the_provider(redis):
    limits = SyncLimits(redis)
    config = provider()
    held = await limits.observe(
        "openai", {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"}, NOW
    )
    assert held == 2
    wait = await limits.acquire("openai", config, BODY, NOW + 500)
    assert wait == pytest.approx(1.5)
    assert isinstance(await limits.acquire("openai", config, BODY, NOW + 2_500), Permit)
    assert await limits.observe("openai", {"x-ratelimit-remaining-requests": "12"}, NOW) is None


def test_reset_durations_and_token_estimate():
    assert reset_seconds("6m0s") == 360
    assert reset_seconds("1.5s") == 1.5
    assert reset_seconds("20ms") == 0.02
    assert reset_seconds("3") == 3
    assert reset_seconds("soon") is None
    assert estimate_tokens(BODY) == len(BODY) // 4 + 100


async def test_a_dead_workers_slot_lapses_after_one_calls_worst_case(redis):
    """A worker killed mid-call never releases its slot; the lane must not stay blocked for long."""
    limits = SyncLimits(redis)
    config = provider(sync_concurrency=1)
    assert isinstance(await limits.acquire("openai", config, BODY, NOW), Permit)  # never released
    assert not isinstance(await limits.acquire("openai", config, BODY, NOW + 1_000), Permit)
    lapse_ms = int(slot_ttl_s(config) * 1000) + 1
    assert isinstance(await limits.acquire("openai", config, BODY, NOW + lapse_ms), Permit)


async def test_a_short_hold_does_not_cut_a_longer_one(redis):
    limits = SyncLimits(redis)
    config = provider()
    await limits.hold("openai", 30, NOW)
    await limits.hold("openai", 1, NOW)
    wait = await limits.acquire("openai", config, BODY, NOW + 5_000)
    assert wait == pytest.approx(25)


async def test_slots_lapse_by_the_servers_clock_not_a_workers(redis, monkeypatch):
    """A worker whose clock runs 60 s ahead must not stamp its slot to lapse 60 s late, nor sweep
    away the slots of workers with a correct clock as if they had lapsed."""
    limits = SyncLimits(redis)
    config = provider(sync_concurrency=2)
    mine = await limits.acquire("openai", config, BODY)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 60)
    ahead = await limits.acquire("openai", config, BODY)
    assert isinstance(mine, Permit)
    assert isinstance(ahead, Permit)  # the first slot was not swept as lapsed
    server = await server_ms(redis)
    ttl_ms = slot_ttl_s(config) * 1000
    for _, lapses_ms in await redis.zrange(keys.sync_slots("openai"), 0, -1, withscores=True):
        assert lapses_ms <= server + ttl_ms


async def test_a_hold_ends_by_the_callers_clock_not_by_key_expiry(redis):
    """Under a virtual clock held still, real time passing does not lift a hold; the clock's step does."""
    clock = ManualClock(NOW)
    limits = SyncLimits(redis, clock)
    config = provider()
    await limits.hold("openai", 0.05)
    await asyncio.sleep(0.2)  # four times the hold, in real time only
    assert await limits.acquire("openai", config, BODY) == pytest.approx(0.05)
    clock.advance(0.05)
    assert isinstance(await limits.acquire("openai", config, BODY), Permit)
