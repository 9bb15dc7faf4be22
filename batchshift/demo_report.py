"""The demo's outcome and its closing report: what the run measured, read from batchshift's own API."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table

from scheduler.ledger import keys

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
    # What a clairvoyant oracle would have paid on the same run (see oracle_actual_usd); None: not measured.
    oracle_actual_usd: float | None = None
    needless_flips: int = 0

    @property
    def on_time_ratio(self) -> float:
        return self.on_time / self.jobs if self.jobs else 0.0

    @property
    def ok(self) -> bool:
        return self.jobs > 0 and self.ended == self.jobs and self.on_time_ratio >= ON_TIME_TARGET


def timestamp(rfc3339: str) -> float:
    """RFC 3339 as epoch seconds."""
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


async def oracle_actual_usd(
    redis: Redis, flipped: Sequence[tuple[str, int, float]], actual_usd: float
) -> tuple[float, int]:
    """What the oracle would have paid on this run, and how many flips it would not have made.

    ``flipped`` holds (job id, deadline ms, sync-equivalent USD) of the jobs that finished by sync.
    The oracle flips exactly the jobs whose batch would have been late. A job that was flipped out of
    a batch that then completed by the job's deadline was flipped needlessly: the oracle would have
    left it on its batch and paid only the batch line (which this run paid too, as duplicate spend),
    so its sync price comes off. A batch we cancelled never showed when it would have ended: its
    jobs count as rightly flipped.
    """
    if not flipped:
        return actual_usd, 0
    async with redis.pipeline(transaction=False) as pipe:
        for job_id, _, _ in flipped:
            pipe.hmget(keys.job(job_id), ["flipped_ms", "batch_id"])
        rows = await pipe.execute()
    batch_ids = sorted({b.decode() for f, b in rows if f and b})
    async with redis.pipeline(transaction=False) as pipe:
        for batch_id in batch_ids:
            pipe.hmget(keys.batch(batch_id), ["ended_ms", "status"])
        ends = dict(zip(batch_ids, await pipe.execute(), strict=True))
    saved, needless = 0.0, 0
    for (_, deadline_ms, sync_usd), (flipped_ms, batch_id) in zip(flipped, rows, strict=True):
        if not flipped_ms or not batch_id:
            continue
        ended, status = ends.get(batch_id.decode(), (None, None))
        if ended and status == b"completed" and int(ended) <= deadline_ms:
            saved += sync_usd
            needless += 1
    return actual_usd - saved, needless


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
    if outcome.oracle_actual_usd is not None and total.get("sync_equivalent_usd"):
        all_sync = total["sync_equivalent_usd"]
        oracle_saved = all_sync - outcome.oracle_actual_usd
        summary.add_row(
            "oracle saved",
            f"${oracle_saved:.4f} ({oracle_saved / all_sync:.2%}); {outcome.needless_flips} needless flips",
        )
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
