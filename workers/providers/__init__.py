"""Provider adapters: one interface (see ``base``) over each provider's batch and sync APIs."""

from __future__ import annotations

import httpx

from config.settings import ProviderSettings
from workers.providers.anthropic import AnthropicAdapter
from workers.providers.azure import AzureAdapter
from workers.providers.base import ProviderAdapter
from workers.providers.gemini import GeminiAdapter
from workers.providers.openai import OpenAIAdapter


def make_adapter(name: str, settings: ProviderSettings, client: httpx.AsyncClient) -> ProviderAdapter:
    """The adapter for a configured provider, on the process's shared HTTP client."""
    if settings.kind == "anthropic":
        return AnthropicAdapter(name, settings, client)
    if settings.kind == "azure_openai":
        return AzureAdapter(name, settings, client)
    if settings.kind == "gemini":
        return GeminiAdapter(name, settings, client)
    return OpenAIAdapter(name, settings, client)


__all__ = [
    "AnthropicAdapter",
    "AzureAdapter",
    "GeminiAdapter",
    "OpenAIAdapter",
    "ProviderAdapter",
    "make_adapter",
]
