"""The console's pure parts: the savings chart's geometry, job timelines, report kinds, packaging."""

from __future__ import annotations

import tomllib
from fnmatch import fnmatch
from pathlib import Path

import orjson
import pytest

from api.console.audits import report_kind
from api.console.chart import HEIGHT, money, savings_chart
from api.console.timeline import timeline
from scheduler.errors import InvalidRequest
from scheduler.ledger.jobs import JobRecord

ROOT = Path(__file__).resolve().parents[2]


def test_chart_scales_to_the_largest_value_and_zero_fills_missing_days():
    days = ["2026-01-01", "2026-01-02", "2026-01-03"]
    rows = {"2026-01-01": {"actual_usd": 1.0, "sync_equivalent_usd": 2.0, "duplicate_usd": 0.0}}
    chart = savings_chart(days, rows)
    sync = next(line for line in chart.lines if line.field == "sync_equivalent_usd")
    actual = next(line for line in chart.lines if line.field == "actual_usd")
    assert [p.value for p in sync.points] == [2.0, 0.0, 0.0]
    assert sync.points[0].y < actual.points[0].y  # higher cost, higher on the chart
    assert sync.points[1].y == sync.points[2].y == chart.baseline
    assert sync.points[0].y == min(y for y, _ in chart.y_ticks)  # the top tick is the maximum
    assert [label for _, label in chart.x_labels] == ["2026-01-01", "2026-01-03"]
    assert all(0 <= p.y <= HEIGHT for line in chart.lines for p in line.points)


def test_chart_of_one_empty_day_has_one_label_and_no_division_by_zero():
    chart = savings_chart(["2026-01-01"], {})
    assert len(chart.x_labels) == 1
    assert all(p.y == chart.baseline for line in chart.lines for p in line.points)


@pytest.mark.parametrize(
    ("value", "shown"),
    [(0, "$0.00"), (0.000123, "$0.000123"), (0.5, "$0.50"), (1234.5, "$1,234.50"), (1e-9, "$0.00")],
)
def test_money(value, shown):
    assert money(value) == shown


def job(**raw: bytes) -> JobRecord:
    base = {
        b"id": b"job_1",
        b"tenant": b"acme",
        b"state": b"succeeded",
        b"route": b"sync",
        b"lane": b"openai:m:/v1/chat/completions",
        b"deadline_ms": b"10000",
        b"created_ms": b"1000",
        b"completed_ms": b"9000",
        b"batch_id": b"bat_1",
    }
    return JobRecord.from_hash(base | {k.encode(): v for k, v in raw.items()})


def test_timeline_orders_job_and_webhook_events():
    delivery = {
        "created_ms": "9000",
        "url": "https://example.com/hook",
        "attempt_log": orjson.dumps([[9100, 500, "HTTP 500"], [9600, 200, ""]]).decode(),
        "delivered_ms": "9600",
    }
    events = timeline(job(batched_ms=b"2000", flipped_ms=b"7000"), delivery)
    assert [e.name for e in events] == [
        "enqueued",
        "batched",
        "flipped",
        "ended",
        "webhook queued",
        "webhook attempt",
        "webhook attempt",
        "webhook delivered",
    ]
    assert events[3].detail == "succeeded by sync, on time"
    assert events[5].detail == "HTTP 500: HTTP 500"


def test_timeline_of_a_queued_job_without_webhook():
    record = JobRecord.from_hash(
        {b"id": b"j", b"state": b"queued", b"deadline_ms": b"5", b"created_ms": b"1"}
    )
    assert [e.name for e in timeline(record, {})] == ["enqueued"]


def test_report_kind_by_content():
    assert report_kind(b'\xef\xbb\xbf {"features": []}') == "json"
    assert report_kind(b"\n<!DOCTYPE html><html></html>") == "html"
    for body in (b"{not json", b"hello", b"<script>alert(1)</script>"):
        with pytest.raises(InvalidRequest):
            report_kind(body)


def test_console_assets_ship_as_package_data():
    """Every template and asset matches a package-data glob, so a wheel install has them."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["api.console"]
    folder = ROOT / "api" / "console"
    shipped = [
        p.relative_to(folder).as_posix() for d in ("templates", "static") for p in (folder / d).iterdir()
    ]
    assert shipped
    for name in shipped:
        assert any(fnmatch(name, g) for g in globs), name
