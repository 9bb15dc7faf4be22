"""Fixtures for the workers tests: one emulator per session on a free port, reset before each test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from config.settings import HttpSettings, ProviderSettings
from workers.emulator import server
from workers.http import build_client
from workers.providers import make_adapter
from workers.providers.anthropic import AnthropicAdapter
from workers.providers.openai import OpenAIAdapter

TEST_TURNAROUND_S = 0.2
# Fast retries: the emulator's injected faults say retry-after 0, the backoff stays in milliseconds.
FAST_HTTP = HttpSettings(max_retries=3, backoff_base=0.01, backoff_max=0.05, read_timeout=10)


@pytest.fixture(scope="session")
def running_emulator() -> Iterator[str]:
    """The base URL of an emulator shared by the session (no ``/v1``); reuse it from other suites."""
    with server.running_emulator({"turnaround_s": TEST_TURNAROUND_S, "retry_after_s": 0}) as url:
        yield url


@pytest.fixture
def emulator(running_emulator: str) -> server.EmulatorControl:
    """The session's emulator, reset to its start settings for this test."""
    control = server.EmulatorControl(running_emulator)
    control.reset()
    return control


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
def openai_adapter(emulator: server.EmulatorControl, client: httpx.AsyncClient) -> OpenAIAdapter:
    adapter = make_adapter("openai", openai_settings(emulator.url), client)
    assert isinstance(adapter, OpenAIAdapter)
    return adapter


@pytest.fixture
def anthropic_adapter(emulator: server.EmulatorControl, client: httpx.AsyncClient) -> AnthropicAdapter:
    adapter = make_adapter("anthropic", anthropic_settings(emulator.url), client)
    assert isinstance(adapter, AnthropicAdapter)
    return adapter
