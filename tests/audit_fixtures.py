"""Deterministic logs for the batch-eligibility audit: the same seed writes the same bytes.

Six features, each with its own shape of traffic over three days, so that every signal fires:

=====================  =========  ======================  ==========================================
feature                provider   model                   traffic
=====================  =========  ======================  ==========================================
nightly-summary        openai     gpt-4o-mini             bursts at 02:00 UTC, tagged ``cron``
chat-assistant         openai     gpt-4o                  a daytime curve, streamed, ``interactive``
support-triage         anthropic  claude-haiku-4-5        a daytime curve, not streamed
doc-extract            anthropic  claude-sonnet-4-5       steady, untagged, 12 s waits
embeddings-backfill    openai     text-embedding-3-small  bursts at 03:00 UTC, tagged ``backfill``
gemini-tagging         gemini     gemini-2.5-flash        steady, tagged ``etl``, 40 s waits
=====================  =========  ======================  ==========================================

:func:`calls` draws the calls; the writers render them as OTLP JSON (the collector file exporter's
one ``ExportTraceServiceRequest`` a line, with a non-GenAI span in every request that the audit must
skip), LiteLLM spend logs as JSON or CSV, and the audit's JSONL. Tests call these into ``tmp_path``;
from a shell, ``python tests/audit_fixtures.py DIR [--records N] [--seed S]`` writes all four files
(``otlp.json``, ``litellm.json``, ``litellm.csv``, ``calls.jsonl``) into DIR.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

START_S = int(datetime(2026, 11, 27, tzinfo=UTC).timestamp())  # the logs' first midnight
DAYS = 3
SPANS_PER_REQUEST = 500  # spans in one line of the OTLP file, as a collector batches them


@dataclass(frozen=True, slots=True)
class Shape:
    """One feature's traffic."""

    feature: str
    caller: str
    provider: str  # the pricing table's kind
    otel_provider: str  # gen_ai.provider.name
    model: str
    share: float
    arrivals: str  # "burst:<hour>", "diurnal" or "steady"
    streamed: float  # share of calls streamed
    tags: tuple[str, ...]
    input_tokens: tuple[int, int]
    output_tokens: tuple[int, int]
    cached_share: float  # share of calls that read half their prompt from the cache
    latency_s: float  # median wait


SHAPES = (
    Shape("nightly-summary", "reports-cron", "openai", "openai", "gpt-4o-mini", 0.25, "burst:2", 0.0,
          ("cron",), (800, 1600), (150, 400), 0.3, 8.0),
    Shape("chat-assistant", "web-app", "openai", "openai", "gpt-4o", 0.30, "diurnal", 0.95,
          ("interactive",), (300, 900), (100, 500), 0.5, 3.0),
    Shape("support-triage", "helpdesk", "anthropic", "anthropic", "claude-haiku-4-5", 0.15, "diurnal", 0.0,
          (), (500, 1500), (50, 200), 0.2, 2.0),
    Shape("doc-extract", "docs-service", "anthropic", "anthropic", "claude-sonnet-4-5", 0.10, "steady", 0.0,
          (), (2000, 6000), (300, 900), 0.0, 12.0),
    Shape("embeddings-backfill", "indexer", "openai", "openai", "text-embedding-3-small", 0.15, "burst:3", 0.0,
          ("backfill",), (200, 800), (0, 0), 0.0, 0.5),
    Shape("gemini-tagging", "catalog", "gemini", "gcp.gemini", "gemini-2.5-flash", 0.05, "steady", 0.0,
          ("etl",), (400, 1200), (20, 80), 0.0, 40.0),
)  # fmt: skip
# Relative call rate in each UTC hour of the day for "diurnal": people at work, 07:00-20:00.
DAY_CURVE = [0.05 + max(0.0, math.sin(math.pi * (h - 7) / 13)) for h in range(24)]


@dataclass(frozen=True, slots=True)
class FixtureCall:
    """One call, before it is written in some log format."""

    feature: str
    caller: str
    provider: str
    otel_provider: str
    model: str
    start_s: float
    latency_ms: int
    stream: bool
    tags: tuple[str, ...]
    input_tokens: int  # cached tokens included
    output_tokens: int
    cached_tokens: int


def _start(rng: random.Random, arrivals: str) -> float:
    day = rng.randrange(DAYS) * 86400
    if arrivals.startswith("burst:"):
        return START_S + day + int(arrivals[6:]) * 3600 + rng.uniform(0, 600)  # a ten-minute cron window
    if arrivals == "diurnal":
        hour = rng.choices(range(24), weights=DAY_CURVE)[0]
        return START_S + day + hour * 3600 + rng.uniform(0, 3600)
    return START_S + rng.uniform(0, DAYS * 86400)


def calls(records: int, seed: int = 19) -> list[FixtureCall]:
    """``records`` calls over three days, in time order; each feature gets its share (rounded down,
    the first feature the rest)."""
    rng = random.Random(seed)
    counts = [int(records * shape.share) for shape in SHAPES]
    counts[0] += records - sum(counts)
    out: list[FixtureCall] = []
    for shape, count in zip(SHAPES, counts, strict=True):
        for _ in range(count):
            inputs = rng.randint(*shape.input_tokens)
            out.append(
                FixtureCall(
                    feature=shape.feature,
                    caller=shape.caller,
                    provider=shape.provider,
                    otel_provider=shape.otel_provider,
                    model=shape.model,
                    start_s=round(_start(rng, shape.arrivals), 3),
                    latency_ms=int(shape.latency_s * 1000 * rng.lognormvariate(0, 0.3)),
                    stream=rng.random() < shape.streamed,
                    tags=shape.tags,
                    input_tokens=inputs,
                    output_tokens=rng.randint(*shape.output_tokens),
                    cached_tokens=inputs // 2 if rng.random() < shape.cached_share else 0,
                )
            )
    out.sort(key=lambda c: c.start_s)
    return out


def _attr(key: str, value: object) -> dict[str, object]:
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}  # OTLP JSON writes int64 as a string
    if isinstance(value, list | tuple):
        return {"key": key, "value": {"arrayValue": {"values": [{"stringValue": v} for v in value]}}}
    return {"key": key, "value": {"stringValue": str(value)}}


def _span(i: int, call: FixtureCall) -> dict[str, object]:
    start_ns = int(round(call.start_s * 1000)) * 1_000_000
    attributes = [
        _attr("gen_ai.operation.name", "embeddings" if "embedding" in call.model else "chat"),
        _attr("gen_ai.provider.name", call.otel_provider),
        _attr("gen_ai.request.model", call.model),
        _attr("gen_ai.usage.input_tokens", call.input_tokens),
        _attr("gen_ai.usage.output_tokens", call.output_tokens),
        _attr("gen_ai.request.stream", call.stream),
        _attr("feature", call.feature),
    ]
    if call.cached_tokens:
        attributes.append(_attr("gen_ai.usage.cache_read.input_tokens", call.cached_tokens))
    if call.tags:
        attributes.append(_attr("tags", list(call.tags)))
    return {
        "traceId": f"{i:032x}",
        "spanId": f"{i:016x}",
        "name": f"chat {call.model}",
        "kind": 3,
        "startTimeUnixNano": str(start_ns),
        "endTimeUnixNano": str(start_ns + call.latency_ms * 1_000_000),
        "attributes": attributes,
        "status": {},
    }


def write_otlp(path: Path, fixture: list[FixtureCall]) -> None:
    """The calls as the OTel collector's file exporter writes them: one request a line, spans grouped by
    service (the caller: ``service.name``), plus one HTTP span a request that is no LLM call."""
    with path.open("w") as out:
        for first in range(0, len(fixture), SPANS_PER_REQUEST):
            by_service: dict[str, list[dict[str, object]]] = {}
            for i, call in enumerate(fixture[first : first + SPANS_PER_REQUEST], first):
                by_service.setdefault(call.caller, []).append(_span(i, call))
            http = {"traceId": f"{first:032x}", "spanId": "ffffffffffffffff", "name": "GET /health", "kind": 2,
                    "startTimeUnixNano": str(START_S * 10**9), "endTimeUnixNano": str(START_S * 10**9 + 10**6),
                    "attributes": [_attr("http.request.method", "GET")]}  # fmt: skip
            request = {
                "resourceSpans": [
                    {
                        "resource": {"attributes": [_attr("service.name", service)]},
                        "scopeSpans": [
                            {
                                "scope": {"name": "opentelemetry.instrumentation.openai_v2"},
                                "spans": spans + [http],
                            }
                        ],
                    }
                    for service, spans in by_service.items()
                ]
            }
            out.write(json.dumps(request, separators=(",", ":")) + "\n")


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _litellm_row(i: int, call: FixtureCall) -> dict[str, object]:
    usage_object: dict[str, object] = {
        "prompt_tokens": call.input_tokens,
        "completion_tokens": call.output_tokens,
        "prompt_tokens_details": {"cached_tokens": call.cached_tokens},
    }
    return {
        "request_id": f"chatcmpl-{i:08d}",
        "call_type": "aembedding" if "embedding" in call.model else "acompletion",
        "api_key": f"{i % 7:064x}",
        "spend": 0.0,  # ignored: the audit prices with config/pricing.toml
        "total_tokens": call.input_tokens + call.output_tokens,
        "prompt_tokens": call.input_tokens,
        "completion_tokens": call.output_tokens,
        "startTime": _iso(call.start_s),
        "endTime": _iso(call.start_s + call.latency_ms / 1000),
        "model": f"{call.provider}/{call.model}" if call.provider == "gemini" else call.model,
        "model_group": call.model,
        "custom_llm_provider": call.provider,
        "user": "",
        "end_user": call.caller,
        "metadata": {"user_api_key_alias": call.caller, "usage_object": usage_object, "tags": []},
        "request_tags": [f"feature:{call.feature}", *call.tags],
        "proxy_server_request": {"model": call.model, "stream": call.stream},
        "cache_hit": "False",
        "status": "success",
    }


def write_litellm_json(path: Path, fixture: list[FixtureCall]) -> None:
    """The calls as a LiteLLM ``/spend/logs`` JSON export (a list of ``LiteLLM_SpendLogs`` rows)."""
    path.write_text(json.dumps([_litellm_row(i, c) for i, c in enumerate(fixture)]))


def write_litellm_csv(path: Path, fixture: list[FixtureCall]) -> None:
    """The same rows as the LiteLLM UI's CSV export: JSON columns as JSON text."""
    rows = [_litellm_row(i, c) for i, c in enumerate(fixture)]
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in row.items()})


def jsonl_line(call: FixtureCall) -> dict[str, object]:
    """One call in the audit's JSONL, with the provider's own usage shape."""
    usage: dict[str, object]
    if call.provider == "anthropic":  # Anthropic's input_tokens exclude cache reads
        usage = {"input_tokens": call.input_tokens - call.cached_tokens, "output_tokens": call.output_tokens,
                 "cache_read_input_tokens": call.cached_tokens}  # fmt: skip
    elif call.provider == "gemini":
        usage = {"promptTokenCount": call.input_tokens, "candidatesTokenCount": call.output_tokens,
                 "cachedContentTokenCount": call.cached_tokens}  # fmt: skip
    else:
        usage = {"prompt_tokens": call.input_tokens, "completion_tokens": call.output_tokens,
                 "prompt_tokens_details": {"cached_tokens": call.cached_tokens}}  # fmt: skip
    tags = [f"feature:{call.feature}", f"caller:{call.caller}", *call.tags]
    return {
        "timestamp": _iso(call.start_s),
        "provider": call.provider,
        "model": call.model,
        "endpoint": "/v1/embeddings" if "embedding" in call.model else "/v1/chat/completions",
        "usage": usage,
        "latency_ms": call.latency_ms,
        "stream": call.stream,
        "tags": tags,
    }


def write_jsonl(path: Path, fixture: list[FixtureCall]) -> None:
    """The calls in the audit's own JSONL."""
    with path.open("w") as out:
        for call in fixture:
            out.write(json.dumps(jsonl_line(call)) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description="write the audit's fixture logs")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=19)
    args = parser.parse_args()
    args.directory.mkdir(parents=True, exist_ok=True)
    fixture = calls(args.records, args.seed)
    write_otlp(args.directory / "otlp.json", fixture)
    write_litellm_json(args.directory / "litellm.json", fixture)
    write_litellm_csv(args.directory / "litellm.csv", fixture)
    write_jsonl(args.directory / "calls.jsonl", fixture)


if __name__ == "__main__":
    main()
