"""Reads the audit's own plain JSONL: one call a line, for logs that are neither OTLP nor LiteLLM.

```json
{"timestamp": "2026-11-30T02:00:05Z", "provider": "openai", "model": "gpt-4o-mini",
 "endpoint": "/v1/chat/completions",
 "usage": {"prompt_tokens": 812, "completion_tokens": 190, "prompt_tokens_details": {"cached_tokens": 512}},
 "latency_ms": 2350, "stream": false,
 "tags": {"feature": "nightly-summary", "caller": "reports-cron"},
 "request": {"model": "gpt-4o-mini", "messages": [...]}}
```

``timestamp`` is ISO-8601 or Unix seconds; ``usage`` is the provider's own usage object (OpenAI's,
Anthropic's or Gemini's ``usageMetadata``), normalised as the scheduler normalises results; ``tags``
is an object or a list of ``key:value`` labels, whose ``feature`` and ``caller`` name the call's
feature and caller; ``request`` (optional) is the request body, whose ``stream`` counts when
``stream`` is absent.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from batchshift.audit.calls import UNTAGGED, Call, provider_kind, split_model, tag_value, tags_of, unix_s
from batchshift.audit.errors import UnreadableLog
from scheduler.costs.pricing import Usage, normalize_usage

# The keys that tell one of our JSONL lines from other JSON.
SIGNATURE = frozenset({"timestamp", "model", "usage"})


def _line_call(path: Path, number: int, record: dict[str, Any]) -> Call:
    start = unix_s(record.get("timestamp"))
    model = record.get("model")
    if start is None or not isinstance(model, str) or not model:
        raise UnreadableLog(f"{path.name}: line {number} needs a timestamp and a model")
    provider, model = split_model(model, str(record.get("provider") or ""))
    kind = provider_kind(provider)
    usage = normalize_usage(kind, record.get("usage")) or Usage(0, 0, 0, 0)
    tags = tags_of(record.get("tags"))
    request = record.get("request")
    stream = record.get("stream")
    if stream is None and isinstance(request, dict):
        stream = request.get("stream", False)
    latency = record.get("latency_ms")
    return Call(
        feature=tag_value(tags, "feature") or UNTAGGED,
        caller=tag_value(tags, "caller") or UNTAGGED,
        provider=kind,
        model=model,
        start_s=start,
        latency_ms=float(latency) if isinstance(latency, int | float) and latency >= 0 else None,
        stream=stream if isinstance(stream, bool) else None,
        tags=tags,
        usage=usage,
    )


def read(path: Path) -> Iterator[Call]:
    """Every line of a JSONL file as a :class:`Call`; a malformed line fails the read, naming it."""
    with path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise UnreadableLog(f"{path.name}: line {number} is not JSON ({exc})") from None
            if not isinstance(record, dict):
                raise UnreadableLog(f"{path.name}: line {number} is not a JSON object")
            yield _line_call(path, number, record)
