"""Lane settings: overrides on defaults, caps bounded by the provider, the registry from Redis."""

from __future__ import annotations

import pytest

from config.settings import LaneDefaults, LaneSettings, ProviderSettings
from scheduler.lanes import UnknownProvider, effective, load_lanes
from scheduler.ledger import Ledger
from tests.conftest import make_settings
from tests.scheduler.planning_support import new_job


def test_override_on_defaults_and_provider_limits(redis_url: str) -> None:
    settings = make_settings(
        redis_url,
        lane_defaults=LaneDefaults(max_wait=30, max_batch_requests=500),
        lanes={"anthropic:c:/v1/messages": LaneSettings(max_batch_bytes=10**12, cron=["0 3 * * *"])},
        providers={
            "anthropic": ProviderSettings(kind="anthropic", base_url="http://x", max_batch_requests=200),
        },
    )
    ln = effective(settings, "anthropic", "c", "/v1/messages")
    assert ln.max_batch_requests == 200  # provider limit below the default
    assert ln.max_batch_bytes == 256 * 1024 * 1024  # the override is capped by the provider
    assert ln.max_wait_s == 30
    assert ln.cron == ("0 3 * * *",)


def test_unknown_provider(redis_url: str) -> None:
    with pytest.raises(UnknownProvider, match="not configured"):
        effective(make_settings(redis_url), "nope", "m", "/e")


async def test_registry_lists_lanes_with_jobs(redis, settings) -> None:
    ledger = Ledger(redis)
    await ledger.enqueue(new_job("openai", "gpt-a", 0))
    await ledger.enqueue(new_job("anthropic", "claude-b", 0))
    await ledger.enqueue(new_job("ghost", "m", 0))  # a provider no longer configured is left out
    lanes = await load_lanes(redis, settings)
    assert [ln.name for ln in lanes] == [
        "anthropic:claude-b:/v1/messages",
        "openai:gpt-a:/v1/chat/completions",
    ]
