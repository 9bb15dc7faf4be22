"""Prometheus metrics, read from Redis at scrape time: every API replica exports the same numbers.

Nothing is counted in process memory. Events add to Redis counters where they happen (``finish.lua``
for finished jobs, cost and end-to-end latency; :func:`observe_turnaround`, :func:`observe_webhook`
and :func:`observe_alert` for the tasks that own those events), and :func:`snapshot` reads them
all in one pipelined round trip; :func:`render` turns a snapshot into the text format through a
custom prometheus-client Collector. Histograms are kept as per-bucket counts in Redis and made
cumulative here.

Labels are bounded: ``lane`` (provider × model × endpoint, bounded by the configured providers and
the models producers use), ``tenant`` (from settings), ``status``/``route``/``outcome``/``severity``/
``action`` (fixed vocabularies). Never a job id, a batch id or an API key.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from config.settings import Settings
from scheduler.costs.budgets import month_of
from scheduler.ledger import keys

STATUSES: Final = ("succeeded", "failed")
ROUTES: Final = ("batch", "flex", "sync")
USD_COUNTERS: Final = {
    "actual_usd": ("batchshift_cost_actual_usd", "Billed cost of finished jobs, by their route's price."),
    "sync_equivalent_usd": (
        "batchshift_cost_sync_equivalent_usd",
        "What the same finished jobs would have cost through the sync API.",
    ),
    "saved_usd": ("batchshift_cost_saved_usd", "Sync-equivalent cost minus actual cost of finished jobs."),
    "duplicate_usd": (
        "batchshift_cost_duplicate_usd",
        "Billed results discarded because their job had already finished elsewhere (flipped).",
    ),
    "wasted_usd": ("batchshift_cost_wasted_usd", "Billed attempts that failed."),
    "deduplicated_saved_usd": (
        "batchshift_cost_deduplicated_saved_usd",
        "What deduplicated jobs would have cost on their own calls, less their share of the call they shared.",
    ),
}
_LABEL_VALUE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


# -- recording (called where events happen) -----------------------------------------------------


def _observe(pipe: Pipeline, key: str, name: str, seconds: float) -> None:
    seconds = max(0.0, seconds)
    le = next((str(b) for b in keys.LATENCY_BUCKETS_S if seconds <= b), "+Inf")
    pipe.hincrby(key, f"{name}:{le}", 1)
    pipe.hincrby(key, f"{name}:count", 1)
    pipe.hincrbyfloat(key, f"{name}:sum", seconds)


def observe_turnaround(pipe: Pipeline, lane: str, seconds: float) -> None:
    """Queue one batch turnaround (submission to end, seconds) on ``pipe``; the caller executes it.

    Call it in the same pipeline that pushes ``keys.lane_turnarounds`` when a batch ends.
    """
    _observe(pipe, keys.lane_metrics(lane), "turnaround", seconds)


def _label(value: str, what: str) -> str:
    if not _LABEL_VALUE.match(value):
        raise ValueError(f"{what} {value!r}: a metric label takes a short snake_case word")
    return value


def observe_webhook(pipe: Pipeline, outcome: str) -> None:
    """Queue one webhook delivery attempt's outcome (``delivered``, ``retry``, ``dead``, ``disabled``)."""
    pipe.hincrby(keys.METRICS_GLOBAL, f"webhook:{_label(outcome, 'outcome')}", 1)


def observe_alert(pipe: Pipeline, severity: str, action: str) -> None:
    """Queue one alert sent (``severity`` e.g. page/ticket, ``action`` e.g. trigger/resolve)."""
    field_name = f"alert:{_label(severity, 'severity')}:{_label(action, 'action')}"
    pipe.hincrby(keys.METRICS_GLOBAL, field_name, 1)


async def record_turnaround(redis: Redis, lane: str, seconds: float) -> None:
    """:func:`observe_turnaround` in its own pipeline, for callers without one."""
    async with redis.pipeline(transaction=False) as pipe:
        observe_turnaround(pipe, lane, seconds)
        await pipe.execute()


# -- reading (at scrape time) ----------------------------------------------------------------------


@dataclass(slots=True)
class LaneFigures:
    """One lane's numbers at scrape time."""

    queue_depth: int = 0
    oldest_age_s: float = 0.0
    counters: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class Snapshot:
    """Everything /metrics exports, read in one round trip."""

    lanes: dict[str, LaneFigures]
    sync_queue_depth: int
    batches_in_flight: int
    webhooks_pending: int
    webhooks_dead: int
    global_counters: dict[str, float]
    budget_spent: dict[str, float]
    budget_limit: dict[str, float]


def _decode(raw: dict[bytes, bytes]) -> dict[str, float]:
    return {k.decode(): float(v) for k, v in raw.items()}


async def snapshot(redis: Redis, settings: Settings, now_ms: int) -> Snapshot:
    """Read every exported number from Redis (two round trips: the lane list, then the rest)."""
    lanes = sorted(m.decode() for m in await redis.smembers(keys.LANES))  # type: ignore[misc]
    budgeted = sorted(t for t, c in settings.tenants.items() if c.monthly_budget_usd is not None)
    month = month_of(now_ms)
    async with redis.pipeline(transaction=False) as pipe:
        for lane in lanes:
            pipe.zcard(keys.lane_queue(lane))
            pipe.zrange(keys.lane_arrivals(lane), 0, 0, withscores=True)
            pipe.hgetall(keys.lane_metrics(lane))
        pipe.zcard(keys.SYNC_QUEUE)
        pipe.zcard(keys.BATCHES_LIVE)
        pipe.zcard(keys.WEBHOOKS_DUE)
        pipe.zcard(keys.WEBHOOKS_DEAD)
        pipe.hgetall(keys.METRICS_GLOBAL)
        for tenant in budgeted:
            pipe.get(keys.budget_spend(tenant, month))
        replies = await pipe.execute()
    figures: dict[str, LaneFigures] = {}
    for i, lane in enumerate(lanes):
        depth, oldest, counters = replies[3 * i : 3 * i + 3]
        age = max(0.0, (now_ms - oldest[0][1]) / 1000) if oldest else 0.0
        figures[lane] = LaneFigures(int(depth), age, _decode(counters))
    rest = replies[3 * len(lanes) :]
    spent = rest[5:]
    return Snapshot(
        lanes=figures,
        sync_queue_depth=int(rest[0]),
        batches_in_flight=int(rest[1]),
        webhooks_pending=int(rest[2]),
        webhooks_dead=int(rest[3]),
        global_counters=_decode(rest[4]),
        budget_spent={t: float(raw or 0) for t, raw in zip(budgeted, spent, strict=True)},
        budget_limit={t: float(settings.tenants[t].monthly_budget_usd or 0) for t in budgeted},
    )


def _histogram(name: str, doc: str, lanes: dict[str, LaneFigures], prefix: str) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["lane"])
    for lane, fig in lanes.items():
        c = fig.counters
        running, buckets = 0.0, []
        for bound in keys.LATENCY_BUCKETS_S:
            running += c.get(f"{prefix}:{bound}", 0.0)
            buckets.append((str(float(bound)), running))
        buckets.append(("+Inf", running + c.get(f"{prefix}:+Inf", 0.0)))
        family.add_metric([lane], buckets, c.get(f"{prefix}:sum", 0.0))
    return family


class SnapshotCollector(Collector):
    """A prometheus-client Collector over one :class:`Snapshot`."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        s = self.snap
        depth = GaugeMetricFamily("batchshift_queue_depth", "Jobs queued in a lane.", labels=["lane"])
        age = GaugeMetricFamily(
            "batchshift_queue_oldest_job_age_seconds", "Age of a lane's oldest queued job.", labels=["lane"]
        )
        jobs = CounterMetricFamily(
            "batchshift_jobs_finished",
            "Jobs finished, by outcome and route.",
            labels=["lane", "status", "route"],
        )
        on_time = CounterMetricFamily(
            "batchshift_jobs_on_time", "Finished jobs done by their deadline.", labels=["lane"]
        )
        late = CounterMetricFamily(
            "batchshift_jobs_late", "Finished jobs done after their deadline.", labels=["lane"]
        )
        relaned = CounterMetricFamily(
            "batchshift_jobs_relaned",
            "Jobs moved from a lane to a sibling lane's batches before any flip.",
            labels=["lane"],
        )
        ratio = GaugeMetricFamily(
            "batchshift_on_time_ratio",
            "Share of a lane's finished jobs done by their deadline, ever.",
            labels=["lane"],
        )
        usd = {f: CounterMetricFamily(name, doc, labels=["lane"]) for f, (name, doc) in USD_COUNTERS.items()}
        for lane, fig in s.lanes.items():
            c = fig.counters
            depth.add_metric([lane], fig.queue_depth)
            age.add_metric([lane], fig.oldest_age_s)
            for status in STATUSES:
                for route in ROUTES:
                    jobs.add_metric([lane, status, route], c.get(f"jobs:{status}:{route}", 0.0))
            good, bad = c.get("on_time", 0.0), c.get("late", 0.0)
            on_time.add_metric([lane], good)
            late.add_metric([lane], bad)
            relaned.add_metric([lane], c.get("relaned", 0.0))
            if good + bad:
                ratio.add_metric([lane], good / (good + bad))
            for name, family in usd.items():
                family.add_metric([lane], c.get(name, 0.0))
        yield from (depth, age, jobs, on_time, late, relaned, ratio, *usd.values())
        yield _histogram(
            "batchshift_job_end_to_end_seconds", "Job enqueue to finish, by lane.", s.lanes, "e2e"
        )
        yield _histogram(
            "batchshift_batch_turnaround_seconds", "Batch submission to end, by lane.", s.lanes, "turnaround"
        )
        yield GaugeMetricFamily(
            "batchshift_sync_queue_depth", "Jobs waiting for the sync lane.", value=s.sync_queue_depth
        )
        yield GaugeMetricFamily(
            "batchshift_batches_in_flight",
            "Provider batches submitted and not yet ingested.",
            value=s.batches_in_flight,
        )
        yield GaugeMetricFamily(
            "batchshift_webhook_pending_deliveries",
            "Webhook deliveries waiting for an attempt.",
            value=s.webhooks_pending,
        )
        yield GaugeMetricFamily(
            "batchshift_webhook_dead_deliveries", "Webhook deliveries dead-lettered.", value=s.webhooks_dead
        )
        hooks = CounterMetricFamily(
            "batchshift_webhook_deliveries", "Webhook delivery attempts, by outcome.", labels=["outcome"]
        )
        alerts = CounterMetricFamily(
            "batchshift_alerts", "Alerts sent, by severity and action.", labels=["severity", "action"]
        )
        for name, value in sorted(s.global_counters.items()):
            kind, _, rest = name.partition(":")
            if kind == "webhook":
                hooks.add_metric([rest], value)
            elif kind == "alert":
                severity, _, action = rest.partition(":")
                alerts.add_metric([severity, action], value)
        yield hooks
        yield alerts
        spent = GaugeMetricFamily(
            "batchshift_budget_spent_usd", "A tenant's billed spend this UTC month.", labels=["tenant"]
        )
        limit = GaugeMetricFamily(
            "batchshift_budget_limit_usd", "A tenant's monthly budget.", labels=["tenant"]
        )
        for tenant, value in s.budget_spent.items():
            spent.add_metric([tenant], value)
            limit.add_metric([tenant], s.budget_limit[tenant])
        yield spent
        yield limit


def render(snap: Snapshot) -> bytes:
    """The snapshot in the Prometheus text exposition format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snap))
    return generate_latest(registry)
