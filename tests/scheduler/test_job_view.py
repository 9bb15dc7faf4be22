"""The job view: iso's fast path writes what datetime writes; the view decoded from fields is the record's."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import orjson
import pytest

from scheduler.ledger.jobs import VIEW_FIELDS, JobRecord, iso, view_of_fields


def reference(ms: int | float) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize(
    "ms",
    [0, 1, 999, 1000, 1001, 1_764_523_251_000, 1_764_523_251_007, 1_764_523_251_999, 2**32 * 1000 - 1],
)
def test_iso_writes_what_datetime_writes(ms: int) -> None:
    assert iso(ms) == reference(ms)


def test_iso_writes_what_datetime_writes_over_its_fast_range_and_beyond() -> None:
    rng = random.Random(5)
    values = [rng.randrange(0, 2**32 * 1000) for _ in range(20_000)]
    values += [2**32 * 1000 + 7, 253_402_300_799_999, -1_500, 1_764_523_251_123.0]  # the slow path
    assert [iso(v) for v in values] == [reference(v) for v in values]  # type: ignore[arg-type]
    assert iso(None) is None


def fields(**over: bytes | None) -> list[bytes | None]:
    base: dict[str, bytes | None] = {
        "id": b"job_1",
        "tenant": b"acme",
        "provider": b"openai",
        "endpoint": b"/v1/chat/completions",
        "model": b"gpt-4o-mini",
        "lane": b"openai:gpt-4o-mini:/v1/chat/completions",
        "state": b"succeeded",
        "route": b"batch",
        "deadline_ms": b"1764609651000",
        "created_ms": b"1764523251000",
        "completed_ms": b"1764523255123",
        "callback_url": b"https://example.com/hook",
        "tags": b'{"feature":"summaries"}',
        "feature": b"summaries",
        "attempts": b"2",
        "usage": b'{"input_tokens":10,"output_tokens":20}',
        "cost": b'{"usd":0.0001}',
        "error": None,
        "dedup_of": None,
    }
    base.update(over)
    return [base[name] for name in VIEW_FIELDS]


@pytest.mark.parametrize(
    "values",
    [
        fields(),
        fields(route=b"", completed_ms=None, callback_url=b"", tags=b"{}", usage=None, cost=None),
        fields(state=b"failed", error=b'{"type":"provider_error","message":"boom"}', attempts=None),
        fields(dedup_of=b"job_0", tags=None, route=None, lane=None, completed_ms=b""),
        fields(tenant=None, feature=None, model="gpt-4o-mini \u00e9".encode()),
    ],
)
@pytest.mark.parametrize("result", [None, b"", b'{"id":"chatcmpl-1","choices":[]}'])
def test_the_view_of_fields_is_the_records_view(values: list[bytes | None], result: bytes | None) -> None:
    """The webhook's view, decoded straight from the HMGET, is the API's (same bytes once encoded)."""
    record = JobRecord.from_view_fields(values)
    assert record is not None
    expected = record.view(result)
    assert view_of_fields(values, result) == expected
    assert view_of_fields([*values, b"00-trace", None], result) == expected  # trace fields after it
    assert orjson.dumps(view_of_fields(values, result)) == orjson.dumps(expected)
