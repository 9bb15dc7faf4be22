"""The job view's timestamps: iso's fast path writes what datetime writes."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from scheduler.ledger.jobs import iso


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
