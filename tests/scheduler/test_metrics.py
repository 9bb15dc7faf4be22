"""/metrics: Prometheus text read from Redis at scrape time, parsed with prometheus-client's parser."""

from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from config.settings import DEFAULT_PRICING_PATH, TenantSettings
from scheduler.costs import metrics
from scheduler.costs.pricing import Pricing
from scheduler.ledger import ids
from scheduler.ledger.jobs import NewJob
from scheduler.ledger.ledger import Finish, Ledger
from scheduler.planning.batches import Batches
from tests.api.harness import asgi_client
from tests.conftest import make_settings

PRICING = Pricing.load(DEFAULT_PRICING_PATH)
LANE = "openai:gpt-4o-mini:/v1/chat/completions"


def new_job(created_ms: int, deadline_ms: int) -> NewJob:
    return NewJob(
        id=ids.job_id(created_ms),
        tenant="acme",
        provider="openai",
        endpoint="/v1/chat/completions",
        model="gpt-4o-mini",
        body=b"{}",
        deadline_ms=deadline_ms,
        created_ms=created_ms,
    )


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


async def populate(redis: Redis, now_ms: int) -> None:
    """Three finished jobs (batch on time, sync late, one duplicate result), two queued, observations."""
    ledger = Ledger(redis)
    usage = {"prompt_tokens": 1000, "completion_tokens": 200}
    on_time = new_job(now_ms - 90_000, now_ms + 3_600_000)  # 90 s end to end
    late = new_job(now_ms - 7_200_000, now_ms - 1)  # 2 h end to end, past its deadline, routed to sync
    late.state = "sync"
    for job in (on_time, late):
        await ledger.enqueue(job)
    batch = PRICING.job_cost("openai", "openai", "gpt-4o-mini", "batch", usage)
    sync = PRICING.job_cost("openai", "openai", "gpt-4o-mini", "sync", usage)
    assert await ledger.finish(
        [
            Finish(on_time.id, "succeeded", "batch", from_states=("queued",), **batch.finish_fields()),
            Finish(late.id, "succeeded", "sync", from_states=("sync",), **sync.finish_fields()),
        ],
        now_ms,
    ) == ["ok", "ok"]
    dup = Finish(late.id, "succeeded", "batch", batch_id="b1", billed=True, **batch.finish_fields())
    assert await ledger.finish([dup], now_ms) == ["skip:succeeded"]
    await ledger.enqueue(new_job(now_ms - 30_000, now_ms + 3_600_000))
    await ledger.enqueue(new_job(now_ms - 5_000, now_ms + 3_600_000))
    async with redis.pipeline(transaction=False) as pipe:
        metrics.observe_turnaround(pipe, LANE, 40_000)  # 11 h
        metrics.observe_turnaround(pipe, LANE, 100_000)  # past 24 h
        metrics.observe_webhook(pipe, "delivered")
        metrics.observe_webhook(pipe, "delivered")
        metrics.observe_webhook(pipe, "retry")
        metrics.observe_alert(pipe, "page", "trigger")
        await pipe.execute()
    await metrics.record_turnaround(redis, LANE, 2.5)


async def test_metrics_export_queue_jobs_costs_histograms_webhooks_alerts(redis: Redis, redis_url: str):
    settings = make_settings(
        redis_url, tenants={"acme": TenantSettings(api_key="acme-key", monthly_budget_usd=10.0)}
    )
    now_ms = int(time.time() * 1000)
    await populate(redis, now_ms)
    async with asgi_client(settings, redis, headers={}) as client:
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/metrics", headers={"authorization": "Bearer acme-key"})).status_code == 403
        response = await client.get("/metrics", headers={"authorization": "Bearer admin-key"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    got = samples(response.text)
    lane = (("lane", LANE),)
    assert got[("batchshift_queue_depth", lane)] == 2
    assert got[("batchshift_queue_oldest_job_age_seconds", lane)] == pytest.approx(30, abs=15)
    jobs = "batchshift_jobs_finished_total"
    assert got[(jobs, (("lane", LANE), ("route", "batch"), ("status", "succeeded")))] == 1
    assert got[(jobs, (("lane", LANE), ("route", "sync"), ("status", "succeeded")))] == 1
    assert got[(jobs, (("lane", LANE), ("route", "flex"), ("status", "failed")))] == 0
    assert got[("batchshift_jobs_on_time_total", lane)] == 1
    assert got[("batchshift_jobs_late_total", lane)] == 1
    assert got[("batchshift_on_time_ratio", lane)] == 0.5
    sync_usd = (1000 * 0.15 + 200 * 0.60) / 1e6
    assert got[("batchshift_cost_actual_usd_total", lane)] == pytest.approx(sync_usd * 1.5)
    assert got[("batchshift_cost_sync_equivalent_usd_total", lane)] == pytest.approx(sync_usd * 2)
    assert got[("batchshift_cost_saved_usd_total", lane)] == pytest.approx(sync_usd / 2)
    assert got[("batchshift_cost_duplicate_usd_total", lane)] == pytest.approx(sync_usd / 2)

    def bucket(name: str, le: str) -> float:
        return got[(f"{name}_bucket", (("lane", LANE), ("le", le)))]

    e2e = "batchshift_job_end_to_end_seconds"
    assert bucket(e2e, "60.0") == 0
    assert bucket(e2e, "120.0") == 1  # the 90 s job
    assert bucket(e2e, "7200.0") == 2  # and the 2 h one
    assert bucket(e2e, "+Inf") == 2 == got[(f"{e2e}_count", lane)]
    assert got[(f"{e2e}_sum", lane)] == pytest.approx(7290, abs=5)
    turn = "batchshift_batch_turnaround_seconds"
    assert bucket(turn, "5.0") == 1
    assert bucket(turn, "43200.0") == 2
    assert bucket(turn, "86400.0") == 2
    assert bucket(turn, "129600.0") == 3 == got[(f"{turn}_count", lane)]
    assert got[("batchshift_webhook_deliveries_total", (("outcome", "delivered"),))] == 2
    assert got[("batchshift_webhook_deliveries_total", (("outcome", "retry"),))] == 1
    assert got[("batchshift_alerts_total", (("action", "trigger"), ("severity", "page")))] == 1
    # Spend is billed money: batch + sync + the duplicate result.
    assert got[("batchshift_budget_spent_usd", (("tenant", "acme"),))] == pytest.approx(sync_usd * 2)
    assert got[("batchshift_budget_limit_usd", (("tenant", "acme"),))] == 10.0
    assert got[("batchshift_batches_in_flight", ())] == 0
    assert not any("job_id" in dict(labels) or "tenant_key" in dict(labels) for _, labels in got)


def test_metric_labels_refuse_unbounded_values():
    with pytest.raises(ValueError, match="snake_case"):
        metrics._label("https://example.com/hook/123", "outcome")


async def test_a_batch_ending_feeds_the_turnaround_histogram(redis: Redis, redis_url: str):
    """The batch task records a batch's end through Batches.push_turnaround (workers/tasks/batches.py);
    that same step must feed batchshift_batch_turnaround_seconds, or the dashboard's panel stays empty."""
    now_ms = int(time.time() * 1000)
    await Ledger(redis).enqueue(new_job(now_ms - 1000, now_ms + 3_600_000))  # the lane exists
    await Batches(redis).push_turnaround(LANE, now_ms, 90_000.0, 10)  # 25 h
    snap = await metrics.snapshot(redis, make_settings(redis_url), now_ms)
    got = samples(metrics.render(snap).decode())
    turn = "batchshift_batch_turnaround_seconds"
    assert got[(f"{turn}_count", (("lane", LANE),))] == 1
    assert got[(f"{turn}_bucket", (("lane", LANE), ("le", "86400.0")))] == 0
    assert got[(f"{turn}_bucket", (("lane", LANE), ("le", "129600.0")))] == 1
    assert got[(f"{turn}_sum", (("lane", LANE),))] == 90_000.0
