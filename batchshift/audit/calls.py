"""One logged LLM call, as every reader yields it, whatever the log's format."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NamedTuple

from scheduler.costs.pricing import Usage

# Provider names as logs spell them (OTel GenAI ``gen_ai.provider.name``/``gen_ai.system``, LiteLLM's
# ``custom_llm_provider``) mapped to the provider kinds config/pricing.toml prices.
PROVIDER_KINDS: dict[str, str] = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gemini": "gemini",
    "gcp.gemini": "gemini",
    "gcp.gen_ai": "gemini",
    "google": "gemini",
    "vertex_ai": "gemini",
    "gcp.vertex_ai": "gemini",
    "azure": "azure_openai",
    "azure_openai": "azure_openai",
    "azure.ai.openai": "azure_openai",
    "az.ai.openai": "azure_openai",
}
UNTAGGED = "(untagged)"  # the feature or caller of a call whose log names none


class Call(NamedTuple):
    """One call: who made it, to what, when, how long it took, and its normalised usage.

    A NamedTuple: an audit holds every call of a 100,000-record log at once.
    """

    feature: str
    caller: str
    provider: str  # a provider kind of the pricing table, or the log's own name when unknown
    model: str
    start_s: float  # Unix seconds
    latency_ms: float | None  # None: the log does not say
    stream: bool | None  # None: the log does not say
    tags: tuple[str, ...]  # ``key:value`` or plain labels, as logged
    usage: Usage


def provider_kind(name: str) -> str:
    """The pricing table's provider kind for a log's provider name (unknown names kept, lower-case)."""
    key = name.strip().lower()
    return PROVIDER_KINDS.get(key, key)


def split_model(model: str, provider: str) -> tuple[str, str]:
    """``openai/gpt-4o-mini`` (LiteLLM's routed names) as (provider, model); else (provider, model)."""
    head, sep, tail = model.partition("/")
    if sep and head.lower() in PROVIDER_KINDS:
        return provider or head, tail
    return provider, model


def tag_value(tags: tuple[str, ...], key: str) -> str | None:
    """The value of a ``key:value`` tag, if any."""
    prefix = key + ":"
    for tag in tags:
        if tag.startswith(prefix):
            return tag[len(prefix) :]
    return None


def tags_of(value: Any) -> tuple[str, ...]:
    """Tags as logged: a list of labels, a ``{key: value}`` object, or one comma-separated string."""
    if isinstance(value, dict):
        return tuple(
            k if v is True else f"{k}:{v}"
            for k, v in value.items()
            if v not in (None, False) and not isinstance(v, dict | list)
        )
    if isinstance(value, list):
        return tuple(str(v) for v in value if isinstance(v, str | int | float))
    if isinstance(value, str) and value:
        return tuple(t.strip() for t in value.split(",") if t.strip())
    return ()


def unix_s(value: Any) -> float | None:
    """A timestamp as Unix seconds: ISO-8601 (``Z`` or an offset; naive means UTC) or a number of
    seconds (milliseconds when it is too large to be seconds)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value / 1000 if value > 1e11 else float(value)
    if not isinstance(value, str) or not value:
        return None
    try:
        return float(value) / 1000 if float(value) > 1e11 else float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value.replace(" ", "T", 1))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC).timestamp()
    return moment.timestamp()
