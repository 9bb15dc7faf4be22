"""Fixtures for the workers tests: an HTTP client with fast retries and adapters on the session's emulator."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from config.settings import HttpSettings, ProviderSettings
from emulator.server import EmulatorControl
from workers.http import build_client
from workers.providers import make_adapter
from workers.providers.anthropic import AnthropicAdapter
from workers.providers.openai import OpenAIAdapter

# Fast retries: the emulator's injected faults say retry-after 0, the backoff stays in milliseconds.
FAST_HTTP = HttpSettings(max_retries=3, backoff_base=0.01, backoff_max=0.05, read_timeout=10)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with build_client(FAST_HTTP) as http_client:
        yield http_client


def openai_settings(url: str, **overrides: object) -> ProviderSettings:
    return ProviderSettings.model_validate(
        {"kind": "openai", "base_url": f"{url}/v1", "api_key": "sk-test", "http": FAST_HTTP, **overrides}
    )


def anthropic_settings(url: str, **overrides: object) -> ProviderSettings:
    return ProviderSettings.model_validate(
        {"kind": "anthropic", "base_url": url, "api_key": "sk-ant-test", "http": FAST_HTTP, **overrides}
    )


@pytest.fixture
def openai_adapter(emulator: EmulatorControl, client: httpx.AsyncClient) -> OpenAIAdapter:
    adapter = make_adapter("openai", openai_settings(emulator.url), client)
    assert isinstance(adapter, OpenAIAdapter)
    return adapter


@pytest.fixture
def anthropic_adapter(emulator: EmulatorControl, client: httpx.AsyncClient) -> AnthropicAdapter:
    adapter = make_adapter("anthropic", anthropic_settings(emulator.url), client)
    assert isinstance(adapter, AnthropicAdapter)
    return adapter
