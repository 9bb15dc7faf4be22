"""The Grafana dashboard and Prometheus rules use only metric names that /metrics exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from scheduler.costs import metrics

DASHBOARDS = Path(__file__).resolve().parent.parent / "dashboards"
METRIC_NAME = re.compile(r"\bbatchshift_[a-z0-9_]+")
RECORDED = re.compile(r"\bbatchshift:[a-z0-9_:]+")


def exported_names() -> set[str]:
    """Every sample and family name of a scrape with one lane, one tenant and each global counter."""
    lane = metrics.LaneFigures(
        queue_depth=1, oldest_age_s=2.0, counters={"on_time": 1, "late": 1, "e2e:60": 1, "turnaround:3600": 1}
    )
    snap = metrics.Snapshot(
        lanes={"openai:gpt-4o-mini:/v1/chat/completions": lane},
        sync_queue_depth=0,
        batches_in_flight=0,
        webhooks_pending=0,
        webhooks_dead=0,
        global_counters={"webhook:delivered": 1, "alert:page:trigger": 1},
        budget_spent={"acme": 1.0},
        budget_limit={"acme": 2.0},
    )
    names: set[str] = set()
    for family in text_string_to_metric_families(metrics.render(snap).decode()):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def dashboard_exprs() -> list[str]:
    board = json.loads((DASHBOARDS / "grafana.json").read_text())
    exprs = [t["expr"] for panel in board["panels"] for t in panel["targets"]]
    exprs += [v["definition"] for v in board["templating"]["list"] if "definition" in v]
    return exprs


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((DASHBOARDS / "prometheus-rules.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_every_referenced_metric_is_exported():
    exported = exported_names()
    referenced = {
        name
        for expr in dashboard_exprs() + [r["expr"] for r in rules()]
        for name in METRIC_NAME.findall(expr)
    }
    assert referenced, "the dashboard and rules reference no metric"
    assert referenced <= exported, sorted(referenced - exported)


def test_recording_rules_used_are_defined():
    recorded = {r["record"] for r in rules() if "record" in r}
    used = {
        name for expr in dashboard_exprs() + [r["expr"] for r in rules()] for name in RECORDED.findall(expr)
    }
    assert used <= recorded, sorted(used - recorded)


def test_burn_rate_alerts_follow_the_multiwindow_table():
    """Page at 14.4x (1 h / 5 m) and 6x (6 h / 30 m), ticket at 1x (3 d / 6 h), both windows required."""
    alerts = {r["alert"]: r for r in rules() if "alert" in r}
    fast = alerts["BatchshiftOnTimeBudgetBurnFast"]
    assert fast["labels"]["severity"] == "page"
    for window, factor in (("1h", "14.4"), ("5m", "14.4"), ("6h", "6"), ("30m", "6")):
        assert f"ratio_rate{window} > ({factor} * 0.001)" in fast["expr"]
    slow = alerts["BatchshiftOnTimeBudgetBurnSlow"]
    assert slow["labels"]["severity"] == "ticket"
    assert "ratio_rate3d > (1 * 0.001) and" in slow["expr"]
    assert "ratio_rate6h" in slow["expr"]
