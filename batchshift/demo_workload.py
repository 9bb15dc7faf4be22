"""The demo's workload: tenants, features and lanes a real deployment would have, with mixed deadlines.

Every request body is provider-native and deterministic for a seed, so two runs send the same work.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

# Tenant -> its features; each feature runs on one lane (provider, model, endpoint).
FEATURES: dict[str, dict[str, tuple[str, str, str]]] = {
    "search": {
        "query-rewrite": ("openai", "gpt-4o-mini", "/v1/chat/completions"),
        "doc-summary": ("anthropic", "claude-haiku-4-5", "/v1/messages"),
    },
    "support": {
        "ticket-triage": ("openai", "gpt-4.1-mini", "/v1/chat/completions"),
        "reply-draft": ("anthropic", "claude-sonnet-4-5", "/v1/messages"),
    },
    "growth": {
        "lead-enrichment": ("openai", "gpt-4.1-mini", "/v1/chat/completions"),
        "similar-docs": ("openai", "text-embedding-3-small", "/v1/embeddings"),
        "market-brief": ("gemini", "gemini-2.5-flash", "generateContent"),
    },
}

# The model whose batch lane the demo stalls midway.
STALLED_MODEL = "gpt-4.1-mini"

_TOPICS = (
    "a customer asking why their invoice doubled this month",
    "a changelog entry for a new bulk export feature",
    "a product review mentioning slow delivery but great support",
    "a lead who runs a 40-person logistics company in Rotterdam",
    "a search query for waterproof hiking boots under 120 euros",
    "an incident report about a failed database migration",
    "a support ticket about two-factor codes that never arrive",
    "a news article on regional energy prices",
)


@dataclass(frozen=True, slots=True)
class Wave:
    """Jobs sent at one moment: how many, with deadlines between ``deadline_s`` seconds from now."""

    name: str
    jobs: int
    deadline_s: tuple[float, float]
    callback_share: float = 0.3


def _body(endpoint: str, model: str, rng: random.Random) -> dict[str, Any]:
    topic = rng.choice(_TOPICS)
    text = f"Here is {topic}. " + " ".join(rng.choice(_TOPICS) for _ in range(rng.randint(2, 12)))
    if endpoint == "/v1/embeddings":
        return {"model": model, "input": text}
    if endpoint == "generateContent":  # Gemini: a GenerateContentRequest plus the model
        return {
            "model": model,
            "contents": [{"role": "user", "parts": [{"text": f"Write a two-line brief on {text}"}]}],
            "generationConfig": {"maxOutputTokens": rng.choice((128, 256))},
        }
    if endpoint == "/v1/messages":
        return {
            "model": model,
            "max_tokens": rng.choice((128, 256, 512)),
            "system": "You are a careful analyst. Answer in plain language.",
            "messages": [{"role": "user", "content": f"Summarise in three bullet points: {text}"}],
        }
    return {
        "model": model,
        "max_tokens": rng.choice((64, 128, 256)),
        "messages": [
            {"role": "system", "content": "Classify and rewrite the user's text; be concise."},
            {"role": "user", "content": text},
        ],
    }


def wave_requests(wave: Wave, rng: random.Random, callback_base: str) -> dict[str, list[dict[str, Any]]]:
    """One wave's job requests, grouped by tenant (each tenant enqueues with its own key)."""
    features = [(t, f, lane) for t, fs in FEATURES.items() for f, lane in fs.items()]
    by_tenant: dict[str, list[dict[str, Any]]] = {}
    for n in range(wave.jobs):
        tenant, feature, (provider, model, endpoint) = features[n % len(features)]
        request: dict[str, Any] = {
            "provider": provider,
            "endpoint": endpoint,
            "body": _body(endpoint, model, rng),
            "deadline_in": round(rng.uniform(*wave.deadline_s), 1),
            "tags": {"feature": feature, "wave": wave.name},
            "idempotency_key": f"demo-{wave.name}-{n}",
        }
        if rng.random() < wave.callback_share:
            request["callback_url"] = f"{callback_base}/hooks/{tenant}"
        by_tenant.setdefault(tenant, []).append(request)
    return by_tenant
