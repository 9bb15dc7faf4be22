"""Reads LiteLLM proxy spend logs (``LiteLLM_SpendLogs`` rows) exported as JSON or CSV.

JSON: a list of rows, or the ``/spend/logs`` pages' ``{"data": [...]}``. CSV: one row a line under
a header of the same column names; the JSON columns (``metadata``, ``request_tags``,
``proxy_server_request``) hold JSON text. Columns read: ``model`` (``openai/gpt-4o-mini`` or
``gpt-4o-mini`` with ``custom_llm_provider``), ``prompt_tokens`` (cached tokens included, LiteLLM's
OpenAI shape), ``completion_tokens``, ``startTime``, ``endTime``, ``request_tags`` and
``metadata.tags``. Cached tokens come from ``metadata.usage_object`` where LiteLLM kept it. The
feature is a ``feature:NAME`` tag or ``metadata.feature``; the caller a ``caller:NAME`` tag, else
``end_user``, ``user``, or the key's alias. Streaming is read from ``proxy_server_request.stream``.
LiteLLM's own ``spend`` is not used: every cost comes from config/pricing.toml, so the audit's
list, batch and flex figures are priced alike.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from batchshift.audit.calls import UNTAGGED, Call, provider_kind, split_model, tag_value, tags_of, unix_s
from batchshift.audit.errors import UnreadableLog
from scheduler.costs.pricing import Usage

# The columns that tell a spend log from other JSON or CSV.
SIGNATURE = frozenset({"spend", "startTime", "model"})
JSON_COLUMNS = ("metadata", "request_tags", "proxy_server_request")


def _json_cell(value: Any) -> Any:
    """A JSON column of a CSV row (text), or of a JSON row (already parsed)."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
    return value


def _int(value: Any) -> int:
    try:
        number = int(float(value))
    except (TypeError, ValueError):
        return 0
    return max(number, 0)


def _row_call(row: dict[str, Any]) -> Call | None:
    model = row.get("model")
    if not isinstance(model, str) or not model:
        return None
    metadata = _json_cell(row.get("metadata"))
    metadata = metadata if isinstance(metadata, dict) else {}
    request = _json_cell(row.get("proxy_server_request"))
    request = request if isinstance(request, dict) else {}
    tags = tags_of(_json_cell(row.get("request_tags"))) or tags_of(metadata.get("tags"))
    provider, model = split_model(model, str(row.get("custom_llm_provider") or ""))
    usage_object = metadata.get("usage_object")
    usage_object = usage_object if isinstance(usage_object, dict) else {}
    details = usage_object.get("prompt_tokens_details")
    inputs = _int(row.get("prompt_tokens"))
    read = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    read = min(read or _int(usage_object.get("cache_read_input_tokens")), inputs)
    write = min(_int(usage_object.get("cache_creation_input_tokens")), inputs - read)
    start = unix_s(row.get("startTime"))
    end = unix_s(row.get("endTime"))
    if start is None:
        return None
    caller = (
        tag_value(tags, "caller")
        or row.get("end_user")
        or row.get("user")
        or metadata.get("user_api_key_alias")
        or metadata.get("user_api_key_team_alias")
    )
    stream = request.get("stream")
    return Call(
        feature=str(tag_value(tags, "feature") or metadata.get("feature") or UNTAGGED),
        caller=str(caller or UNTAGGED),
        provider=provider_kind(provider),
        model=model,
        start_s=start,
        latency_ms=(end - start) * 1000 if end is not None and end >= start else None,
        stream=stream if isinstance(stream, bool) else None,
        tags=tags,
        usage=Usage(inputs, _int(row.get("completion_tokens")), read, write),
    )


def _calls(rows: Iterable[Any]) -> Iterator[Call]:
    for row in rows:
        if isinstance(row, dict):
            call = _row_call(row)
            if call is not None:
                yield call


def read_json(path: Path) -> Iterator[Call]:
    """Every row of a JSON spend-log export as a :class:`Call`."""
    try:
        doc = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise UnreadableLog(f"{path.name}: not JSON ({exc})") from None
    rows = doc.get("data") if isinstance(doc, dict) else doc
    if not isinstance(rows, list) or not all(isinstance(r, dict) and SIGNATURE <= r.keys() for r in rows[:1]):
        raise UnreadableLog(f"{path.name}: expected a list of spend-log rows (spend, startTime, model)")
    yield from _calls(rows)


def read_csv(path: Path) -> Iterator[Call]:
    """Every row of a CSV spend-log export as a :class:`Call`."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        yield from _calls(csv.DictReader(handle))


def is_csv_header(line: str) -> bool:
    """Whether a CSV header line names the spend-log columns."""
    return SIGNATURE <= set(next(csv.reader(io.StringIO(line)), []))
