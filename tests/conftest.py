"""Shared fixtures: one private redis-server per test session, flushed before each test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from batchshift.embedded_redis import embedded_redis
from config.settings import ProviderSettings, Settings, TenantSettings

# Tests never read the shipped config/batchshift.toml: they build Settings themselves.
os.environ["BATCHSHIFT_CONFIG"] = ""


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A redis-server this session started on a free port (whatever else runs on the machine)."""
    with embedded_redis() as url:
        yield url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """A client to the session's redis-server, on an empty database."""
    client = Redis.from_url(redis_url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


def make_settings(redis_url: str, **overrides: object) -> Settings:
    """Settings for tests: two tenants, an OpenAI and an Anthropic provider (the emulator's URL is set later)."""
    base: dict[str, object] = {
        "redis_url": redis_url,
        "admin_api_key": "admin-key",
        "tenants": {
            "acme": TenantSettings(
                api_key="acme-key", webhook_secrets=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
            ),
            "globex": TenantSettings(api_key="globex-key"),
        },
        # allow_any_model: most tests name short made-up models ("m"); the model catalogue has its
        # own tests (tests/scheduler/test_lanes.py) with providers that keep it.
        "providers": {
            "openai": ProviderSettings(
                kind="openai", base_url="http://127.0.0.1:9/v1", api_key="sk-test", allow_any_model=True
            ),
            "anthropic": ProviderSettings(
                kind="anthropic", base_url="http://127.0.0.1:9", api_key="sk-ant", allow_any_model=True
            ),
        },
    }
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


@pytest.fixture
def settings(redis_url: str) -> Settings:
    """Default test settings; tests needing other values call ``make_settings`` themselves."""
    return make_settings(redis_url)
