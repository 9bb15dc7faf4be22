"""Deterministic answers and token usage for the emulated endpoints.

An answer is a pure function of the request body (hashed with sorted keys), so a batch line and
the same body sent synchronously get the same text and usage. Tokens are counted as a quarter of
the UTF-8 byte length (at least 1), plus 4 per message.

Prompt caching (documented for cost tests): a request's *cache prefix* is, on OpenAI, its leading
system/developer messages (chat) or its ``instructions`` (responses), together with its
``prompt_cache_key``; on Anthropic, every system and message block up to and including the last one
carrying ``cache_control``. A prefix of at least 1,024 tokens can be cached: when it is warm
(:mod:`emulator.prompt_cache` says when) OpenAI reports it as ``cached_tokens`` (rounded down to a
multiple of 128) and Anthropic as ``cache_read_input_tokens``; when cold, Anthropic reports it as
``cache_creation_input_tokens``. ``POST /_emulator/reset`` forgets every entry.
"""

from __future__ import annotations

import base64
import hashlib
import random
import struct
import time
from typing import Any

import orjson

from emulator.prompt_cache import ONE_HOUR_S, OPENAI_IDLE_TTL_S, Warmth, anthropic_ttl, prefix_key

MIN_CACHED_PREFIX_TOKENS = 1024  # both providers' smallest cacheable prefix
OPENAI_CACHE_BLOCK = 128  # OpenAI reports cache hits in 128-token increments
DEFAULT_MAX_OUTPUT = 64  # the longest natural answer; max_tokens below it truncates
DEFAULT_EMBEDDING_DIMS = 8  # small vectors keep tests and benchmarks fast
PER_MESSAGE_TOKENS = 4

_WORDS = (
    "batch shift latency budget deadline token queue lane model result cost window provider "
    "request answer emulated steady quiet careful simple honest"
).split()


def tokens(text: str) -> int:
    """Emulated token count of a text."""
    return max(1, (len(text.encode()) + 3) // 4)


def seed_of(body: dict[str, Any]) -> int:
    """A stable 64-bit seed for a request body."""
    return int.from_bytes(hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).digest()[:8], "big")


def reply(seed: int, max_tokens: int | None) -> tuple[str, int, bool]:
    """The reply text, its token count and whether max_tokens cut it short."""
    natural = 8 + seed % (DEFAULT_MAX_OUTPUT - 7)
    count = natural if not max_tokens or max_tokens >= natural else max(1, max_tokens)
    rng = random.Random(seed)
    return " ".join(rng.choice(_WORDS) for _ in range(count)), count, count < natural


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_text(part) for part in content)
    if isinstance(content, dict):
        if isinstance(content.get("text"), str):
            return str(content["text"])
        if "content" in content:
            return _text(content["content"])
        return orjson.dumps(content).decode()
    return "" if content is None else str(content)


def _id(prefix: str, seed: int) -> str:
    return f"{prefix}{seed:016x}"


# --- OpenAI ---------------------------------------------------------------------------------


def openai_error(
    status: int, message: str, err_type: str, code: str | None, param: str | None = None
) -> bytes:
    """An OpenAI error body."""
    return orjson.dumps({"error": {"message": message, "type": err_type, "param": param, "code": code}})


def validate_openai(endpoint: str, body: Any) -> str | None:
    """Why an OpenAI request body is invalid, or None."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    if not isinstance(body.get("model"), str):
        return "you must provide a model parameter"
    field = {"/v1/chat/completions": "messages", "/v1/embeddings": "input", "/v1/responses": "input"}.get(
        endpoint
    )
    if field is None:
        return f"endpoint {endpoint} is not emulated"
    if body.get(field) in (None, "", []):
        return f"missing required parameter: '{field}'"
    return None


def _openai_cached(cache: Warmth, body: dict[str, Any], prefix: str) -> int:
    prefix_tokens = tokens(prefix) if prefix else 0
    if prefix_tokens < MIN_CACHED_PREFIX_TOKENS:
        return 0
    cache_key = body.get("prompt_cache_key")
    key = prefix_key("openai", body["model"], cache_key if isinstance(cache_key, str) else "", prefix)
    if not cache.seen(key, OPENAI_IDLE_TTL_S):
        return 0
    return prefix_tokens // OPENAI_CACHE_BLOCK * OPENAI_CACHE_BLOCK


def openai_answer(endpoint: str, body: dict[str, Any], cache: Warmth, service_tier: str) -> dict[str, Any]:
    """The answer OpenAI would give to a valid ``body`` on ``endpoint``."""
    if endpoint == "/v1/embeddings":
        return _embeddings(body)
    if endpoint == "/v1/responses":
        return _responses(body, cache, service_tier)
    return _chat(body, cache, service_tier)


def _chat(body: dict[str, Any], cache: Warmth, service_tier: str) -> dict[str, Any]:
    seed, model = seed_of(body), body["model"]
    messages = body["messages"] if isinstance(body["messages"], list) else [body["messages"]]
    prompt = sum(tokens(_text(m.get("content") if isinstance(m, dict) else m)) for m in messages)
    prompt += PER_MESSAGE_TOKENS * len(messages)
    prefix = ""
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("system", "developer"):
            break
        prefix += _text(message.get("content"))
    cached = _openai_cached(cache, body, prefix)
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    text, completion, cut = reply(seed, max_tokens)
    return {
        "id": _id("chatcmpl-", seed),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": "length" if cut else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": service_tier,
        "system_fingerprint": "fp_emulator",
    }


def _responses(body: dict[str, Any], cache: Warmth, service_tier: str) -> dict[str, Any]:
    seed, model = seed_of(body), body["model"]
    instructions = body.get("instructions")
    raw_input = body["input"]
    items = raw_input if isinstance(raw_input, list) else [raw_input]
    prompt = sum(tokens(_text(item)) for item in items) + PER_MESSAGE_TOKENS * len(items)
    prefix = instructions if isinstance(instructions, str) else ""
    if prefix:
        prompt += tokens(prefix)
    cached = _openai_cached(cache, body, prefix)
    text, output, cut = reply(seed, body.get("max_output_tokens"))
    now = int(time.time())
    return {
        "id": _id("resp_", seed),
        "object": "response",
        "created_at": now,
        "completed_at": now,
        "status": "incomplete" if cut else "completed",
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "instructions": instructions,
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": body.get("metadata") or {},
        "model": model,
        "output": [
            {
                "type": "message",
                "id": _id("msg_", seed),
                "status": "incomplete" if cut else "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
            }
        ],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "service_tier": service_tier,
        "store": False,
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + output,
        },
        "user": None,
    }


def _embeddings(body: dict[str, Any]) -> dict[str, Any]:
    raw = body["input"]
    inputs = (
        [raw] if isinstance(raw, str) or (isinstance(raw, list) and raw and isinstance(raw[0], int)) else raw
    )
    dims = int(body.get("dimensions") or DEFAULT_EMBEDDING_DIMS)
    data, prompt = [], 0
    for index, item in enumerate(inputs):
        text = item if isinstance(item, str) else orjson.dumps(item).decode()
        prompt += tokens(text)
        rng = random.Random(seed_of({"model": body["model"], "input": text}))
        vector = [round(rng.uniform(-1, 1), 6) for _ in range(dims)]
        embedding: list[float] | str = vector
        if body.get("encoding_format") == "base64":
            embedding = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return {
        "object": "list",
        "data": data,
        "model": body["model"],
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }


def openai_usage_totals(totals: dict[str, int], body: dict[str, Any]) -> None:
    """Add an answer's usage to a batch's running ``usage`` totals (Batch.usage's shape)."""
    usage = body.get("usage") or {}
    inputs = usage.get("prompt_tokens", usage.get("input_tokens", 0))
    outputs = usage.get("completion_tokens", usage.get("output_tokens", 0))
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    totals["input_tokens"] = totals.get("input_tokens", 0) + inputs
    totals["output_tokens"] = totals.get("output_tokens", 0) + outputs
    totals["cached_tokens"] = totals.get("cached_tokens", 0) + details.get("cached_tokens", 0)


# --- Anthropic ------------------------------------------------------------------------------

ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_error_object(status: int, message: str, request_id: str) -> dict[str, Any]:
    """An Anthropic ErrorResponse object."""
    err_type = ANTHROPIC_ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": err_type, "message": message}, "request_id": request_id}


def anthropic_error(status: int, message: str, request_id: str = "req_emulator") -> bytes:
    """An Anthropic error body."""
    return orjson.dumps(anthropic_error_object(status, message, request_id))


def validate_anthropic(params: Any) -> str | None:
    """Why Messages API params are invalid, or None."""
    if not isinstance(params, dict):
        return "params: Input should be an object"
    if not isinstance(params.get("model"), str):
        return "model: Field required"
    max_tokens = params.get("max_tokens")
    if not isinstance(max_tokens, int) or max_tokens < 1:
        return "max_tokens: Field required (an integer of at least 1)"
    if not isinstance(params.get("messages"), list) or not params["messages"]:
        return "messages: Field required (at least one message)"
    if params.get("stream"):
        return "stream: streaming is not supported here"
    return None


def anthropic_answer(params: dict[str, Any], cache: Warmth, service_tier: str) -> dict[str, Any]:
    """The Message Anthropic would return for valid ``params``."""
    seed, model = seed_of(params), params["model"]
    blocks: list[tuple[str, Any]] = []  # (text, its cache_control or None)
    system = params.get("system")
    for block in system if isinstance(system, list) else ([system] if system else []):
        blocks.append((_text(block), block.get("cache_control") if isinstance(block, dict) else None))
    total = 0
    for message in params["messages"]:
        content = message.get("content") if isinstance(message, dict) else message
        total += PER_MESSAGE_TOKENS
        for block in content if isinstance(content, list) else [content]:
            blocks.append((_text(block), block.get("cache_control") if isinstance(block, dict) else None))
    last_marked = max((i for i, (_, marked) in enumerate(blocks) if marked is not None), default=-1)
    prefix = "".join(text for text, _ in blocks[: last_marked + 1])
    total += sum(tokens(text) for text, _ in blocks)
    prefix_tokens = sum(tokens(text) for text, _ in blocks[: last_marked + 1])
    created = read = 0
    ttl = 0.0
    if prefix_tokens >= MIN_CACHED_PREFIX_TOKENS:
        marker = blocks[last_marked][1]
        ttl = anthropic_ttl(marker.get("ttl") if isinstance(marker, dict) else None)
        if cache.seen(prefix_key("anthropic", model, prefix), ttl):
            read = prefix_tokens
        else:
            created = prefix_tokens
    text, output, cut = reply(seed, params["max_tokens"])
    return {
        "id": _id("msg_", seed),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "max_tokens" if cut else "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": total - created - read,
            "output_tokens": output,
            "cache_creation_input_tokens": created,
            "cache_read_input_tokens": read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": created if ttl < ONE_HOUR_S else 0,
                "ephemeral_1h_input_tokens": created if ttl >= ONE_HOUR_S else 0,
            },
            "service_tier": service_tier,
        },
    }
