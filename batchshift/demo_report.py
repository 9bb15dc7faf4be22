"""The demo's outcome and its closing report: what the run measured, read from batchshift's own API."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table

ON_TIME_TARGET = 0.999


@dataclass
class Outcome:
    """What the demo measured; ``ok`` decides the exit status."""

    jobs: int = 0
    ended: int = 0
    on_time: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    routes: Counter[str] = field(default_factory=Counter)
    costs_by_feature: dict[str, Any] = field(default_factory=dict)
    pages: Counter[str] = field(default_factory=Counter)
    open_incidents: int = 0
    webhooks_delivered: int = 0
    webhooks_expected: int = 0
    bad_signatures: int = 0
    refused: int = 0

    @property
    def on_time_ratio(self) -> float:
        return self.on_time / self.jobs if self.jobs else 0.0

    @property
    def ok(self) -> bool:
        return self.jobs > 0 and self.ended == self.jobs and self.on_time_ratio >= ON_TIME_TARGET


def timestamp(rfc3339: str) -> float:
    """RFC 3339 as epoch seconds."""
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def report(outcome: Outcome, console: Console) -> None:
    """The closing report."""
    console.print()
    summary = Table(title="batchshift demo report", show_header=False)
    summary.add_column(style="bold")
    summary.add_column(justify="right")
    summary.add_row("jobs", str(outcome.jobs))
    summary.add_row("ended", f"{outcome.ended} ({dict(outcome.statuses)})")
    summary.add_row("on time", f"{outcome.on_time_ratio:.2%} (target {ON_TIME_TARGET:.1%})")
    summary.add_row("by route", ", ".join(f"{r} {n}" for r, n in sorted(outcome.routes.items())))
    total = outcome.costs_by_feature.get("total", {})
    summary.add_row(
        "cost",
        f"${total.get('actual_usd', 0):.4f} actual vs ${total.get('sync_equivalent_usd', 0):.4f} all-sync",
    )
    summary.add_row("saved", f"${total.get('saved_usd', 0):.4f} ({total.get('saved_pct', 0)}%)")
    summary.add_row("duplicate spend", f"${total.get('duplicate_usd', 0):.4f}")
    summary.add_row("pages", f"{outcome.pages['trigger']} sent, {outcome.pages['resolve']} resolved")
    summary.add_row(
        "webhooks",
        f"{outcome.webhooks_delivered} delivered of {outcome.webhooks_expected}, "
        f"{outcome.bad_signatures} bad signatures",
    )
    console.print(summary)
    features = Table(title="savings against all-sync, by feature")
    for column in ("feature", "jobs", "actual $", "all-sync $", "saved %", "sync share", "on time %"):
        if column == "feature":
            features.add_column(column, no_wrap=True, min_width=15)
        else:
            features.add_column(column, justify="right")
    for group in outcome.costs_by_feature.get("groups", []):
        features.add_row(
            str(group["key"]),
            str(group["jobs"]),
            f"{group['actual_usd']:.4f}",
            f"{group['sync_equivalent_usd']:.4f}",
            str(group["saved_pct"]),
            f"{group['sync_share']:.1%}" if group["sync_share"] is not None else "-",
            str(group["on_time_pct"]),
        )
    console.print(features)
    verdict = "[bold green]PASS[/]" if outcome.ok else "[bold red]FAIL[/]"
    console.print(f"{verdict}: every job ended and on time met the SLO" if outcome.ok else f"{verdict}")
