"""Token estimates from a request body, before a provider has counted them.

One rule for every estimate batchshift makes (budget ceilings and reservations, the sync lane's
token-rate limits, the policy lab's byte caps): about ``BYTES_PER_TOKEN`` bytes of request per input
token, and the body's output cap as its output tokens.
"""

from __future__ import annotations

from typing import Any

import orjson

# Prompt tokens estimated from the request body: about 4 bytes of text per token (OpenAI's and
# Anthropic's rule of thumb; JSON framing makes this an overestimate, which a ceiling wants).
BYTES_PER_TOKEN = 4
OUTPUT_CAP_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def input_tokens(body_bytes: int) -> int:
    """Input tokens of a body of ``body_bytes`` bytes (at least 1)."""
    return max(1, body_bytes // BYTES_PER_TOKEN)


def output_cap(body: dict[str, Any]) -> int | None:
    """The body's output token cap (``max_tokens``, ``max_completion_tokens`` or ``max_output_tokens``)."""
    for name in OUTPUT_CAP_FIELDS:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def estimate(body: bytes) -> tuple[int, int]:
    """(input tokens, output tokens) of a request body: its size, and its output cap (0 without one)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    cap = output_cap(doc) if isinstance(doc, dict) else None
    return input_tokens(len(body)), cap or 0
