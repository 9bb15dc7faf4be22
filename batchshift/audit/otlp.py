"""Reads OpenTelemetry GenAI spans as OTLP JSON, the collector's file exporter output.

The file exporter writes one ``ExportTraceServiceRequest`` per line (``{"resourceSpans": [...]}``);
a single pretty-printed request is read too. A span is a call when it has ``gen_ai.request.model``
(or ``gen_ai.response.model``). Attributes follow the GenAI semantic conventions: the provider from
``gen_ai.provider.name`` (or the older ``gen_ai.system``), tokens from ``gen_ai.usage.input_tokens``
(cached tokens included, as the conventions say) and ``gen_ai.usage.output_tokens``, cache reads
and writes from ``gen_ai.usage.cache_read.input_tokens`` and ``gen_ai.usage.cache_creation.input_tokens``
(or their older spellings). The conventions name no feature or caller: the audit reads the first of
:data:`FEATURE_KEYS` and :data:`CALLER_KEYS` on the span, then on its resource, and falls back to the
resource's ``service.name``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from batchshift.audit.calls import UNTAGGED, Call, provider_kind, split_model, tags_of
from batchshift.audit.errors import UnreadableLog
from scheduler.costs.pricing import Usage

FEATURE_KEYS = ("batchshift.feature", "feature", "app.feature")
CALLER_KEYS = ("batchshift.caller", "caller", "app.caller", "enduser.id")
TAG_KEYS = ("batchshift.tags", "tags")
STREAM_KEYS = ("gen_ai.request.stream", "gen_ai.response.streaming", "llm.is_streaming")
CACHE_READ_KEYS = (
    "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.cache_read_input_tokens",
    "gen_ai.usage.input_tokens.cached",
)
CACHE_WRITE_KEYS = (
    "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.cache_creation_input_tokens",
    "gen_ai.usage.input_tokens.cache_write",
)


def _value(value: dict[str, Any]) -> Any:
    """An OTLP ``AnyValue`` as Python (int64 values arrive as JSON strings)."""
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        return int(value["intValue"])
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "arrayValue" in value:
        return [_value(v) for v in value["arrayValue"].get("values", [])]
    return None


def _attributes(items: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {a["key"]: _value(a.get("value") or {}) for a in items or () if "key" in a}


def _first(keys: tuple[str, ...], *scopes: dict[str, Any]) -> Any:
    for scope in scopes:
        for key in keys:
            if scope.get(key) not in (None, ""):
                return scope[key]
    return None


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0


def _span_call(span: dict[str, Any], resource: dict[str, Any]) -> Call | None:
    attrs = _attributes(span.get("attributes"))
    model = attrs.get("gen_ai.request.model") or attrs.get("gen_ai.response.model")
    if not isinstance(model, str):
        return None
    provider = str(attrs.get("gen_ai.provider.name") or attrs.get("gen_ai.system") or "")
    provider, model = split_model(model, provider)
    service = resource.get("service.name")
    start_ns = int(span.get("startTimeUnixNano") or 0)
    end_ns = int(span.get("endTimeUnixNano") or 0)
    inputs = _count(attrs.get("gen_ai.usage.input_tokens") or attrs.get("gen_ai.usage.prompt_tokens"))
    read = min(_count(_first(CACHE_READ_KEYS, attrs)), inputs)
    write = min(_count(_first(CACHE_WRITE_KEYS, attrs)), inputs - read)
    output = _count(attrs.get("gen_ai.usage.output_tokens") or attrs.get("gen_ai.usage.completion_tokens"))
    stream = _first(STREAM_KEYS, attrs)
    return Call(
        feature=str(_first(FEATURE_KEYS, attrs, resource) or service or UNTAGGED),
        caller=str(_first(CALLER_KEYS, attrs, resource) or service or UNTAGGED),
        provider=provider_kind(provider),
        model=model,
        start_s=start_ns / 1e9,
        latency_ms=(end_ns - start_ns) / 1e6 if end_ns >= start_ns > 0 else None,
        stream=stream if isinstance(stream, bool) else None,
        tags=tags_of(_first(TAG_KEYS, attrs, resource)),
        usage=Usage(inputs, output, read, write),
    )


def _requests(path: Path) -> Iterator[dict[str, Any]]:
    """Each ``ExportTraceServiceRequest`` of the file: one a line, or the whole file as one."""
    text = path.read_bytes()
    try:
        whole = orjson.loads(text)
    except orjson.JSONDecodeError:
        whole = None
    if isinstance(whole, dict):
        yield whole
        return
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            request = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise UnreadableLog(f"{path.name}: line {number} is not JSON ({exc})") from None
        if isinstance(request, dict):
            yield request


def read(path: Path) -> Iterator[Call]:
    """Every GenAI span of an OTLP JSON file as a :class:`Call`; other spans are skipped."""
    for request in _requests(path):
        for resource_spans in request.get("resourceSpans") or ():
            resource = _attributes((resource_spans.get("resource") or {}).get("attributes"))
            for scope_spans in resource_spans.get("scopeSpans") or ():
                for span in scope_spans.get("spans") or ():
                    call = _span_call(span, resource)
                    if call is not None:
                        yield call
