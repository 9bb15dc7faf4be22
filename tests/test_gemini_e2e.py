"""Gemini end to end: real Redis, the emulator's Gemini routes over HTTP, the scheduler's tick and an
arq worker on one virtual clock (the harness of :mod:`tests.test_slo_e2e`).

Gemini jobs go through batches to results, signed webhooks and costs; a stalled Gemini lane
flips its jobs to sync in time; a batch that expires at 48 h (Gemini keeps no results of it)
sends its jobs on, none lost.
"""

from __future__ import annotations

import httpx
import orjson
import pytest

from config.settings import ProviderSettings, Settings
from scheduler.ledger import ids, keys
from scheduler.ledger.jobs import NewJob
from scheduler.ledger.ledger import day_of
from tests import test_slo_e2e as slo
from tests.api.harness import ADMIN, asgi_client
from tests.test_slo_e2e import FAST_HTTP, Pipeline, all_terminal, e2e_settings, records
from tests.workers.receiver import running_receiver

pytestmark = pytest.mark.timeout(900)

# The SLO end-to-end fixtures, shared by name: the module's emulator, both Redis servers, the pager.
emulator_url = slo.emulator_url
emulator = slo.emulator
redis_url = slo.redis_url
pagerduty = slo.pagerduty
harness = slo.harness

MODEL = "gemini-2.5-flash"
ENDPOINT = "generateContent"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # acme's, in tests.conftest.make_settings
BODY = orjson.dumps({"model": MODEL, "contents": [{"role": "user", "parts": [{"text": "Summarise this."}]}]})


def gemini_settings(redis_url: str, emulator, pagerduty, **extra: object) -> Settings:
    """The SLO end-to-end settings with one Gemini provider on the emulator (base URL without a version)."""
    provider = ProviderSettings(kind="gemini", base_url=emulator.url, api_key="gemini-test", http=FAST_HTTP)
    settings = e2e_settings(redis_url, emulator, pagerduty)
    return settings.model_copy(update={"providers": {"gemini": provider}, **extra})


async def enqueue(pipeline: Pipeline, deadlines_s: list[float], callback_url: str | None = None) -> list[str]:
    now = pipeline.clock.ms
    jobs = [
        NewJob(
            id=ids.job_id(now),
            tenant="acme",
            provider="gemini",
            endpoint=ENDPOINT,
            model=MODEL,
            body=BODY,
            deadline_ms=now + int(d * 1000),
            created_ms=now,
            callback_url=callback_url,
            tags={"feature": "gemini-e2e"},
        )
        for d in deadlines_s
    ]
    return [o.job_id for o in await pipeline.ledger.enqueue_many(jobs)]


async def test_gemini_jobs_by_batch_to_results_webhooks_and_costs(
    redis, redis_url, emulator, pagerduty, harness
):
    with running_receiver(secrets=(SECRET,)) as receiver:
        settings = gemini_settings(redis_url, emulator, pagerduty, webhook_allowlist=["127.0.0.1"])
        pipeline = harness(settings)
        job_ids = await enqueue(pipeline, [15] * 4, callback_url=receiver.url)
        await pipeline.run_until(all_terminal(pipeline.ledger, job_ids), within_s=15)
        for job in await records(pipeline.ledger, job_ids):
            assert job.state == "succeeded"
            assert job.route == "batch"
            assert job.completed_ms is not None
            assert job.completed_ms <= job.deadline_ms
            assert job.cost is not None
            assert job.cost["actual_usd"] > 0
            assert job.cost["sync_equivalent_usd"] == pytest.approx(2 * job.cost["actual_usd"], rel=0.01)

        async def delivered() -> bool:
            return len(receiver.requests) >= len(job_ids)

        await pipeline.run_until(delivered, within_s=10)
    events = [orjson.loads(r.body) for r in receiver.requests]
    assert sorted(e["data"]["id"] for e in events) == sorted(job_ids)
    assert {e["type"] for e in events} == {"job.succeeded"}
    assert all(r.verified for r in receiver.requests)
    for event in events:
        assert event["data"]["result"]["candidates"][0]["content"]["parts"][0]["text"]
    calls = [(c["method"], c["path"]) for c in emulator.requests()]
    assert ("POST", f"/v1beta/models/{MODEL}:batchGenerateContent") in calls
    assert not any(path.endswith(":generateContent") for _, path in calls)  # nothing went sync
    # Ingested: the batch is deleted at the provider, so it keeps none of the tenant's answers.
    assert any(method == "DELETE" and path.startswith("/v1beta/batches/") for method, path in calls)
    total = await redis.hgetall(keys.agg_total(day_of(pipeline.start_ms), "acme"))
    assert float(total[b"actual_usd"]) > 0
    assert float(total[b"sync_equivalent_usd"]) == pytest.approx(2 * float(total[b"actual_usd"]), rel=0.01)
    # The lane shows where every lane shows: its SLO snapshot, its costs and its Prometheus series.
    lane = (await records(pipeline.ledger, job_ids[:1]))[0].lane
    async with asgi_client(settings, redis, ADMIN) as client:
        lanes = await client.get("/v1/lanes")
        by_lane = await client.get("/v1/costs", params={"group_by": "lane"})
        metrics = await client.get("/metrics")
    assert lane in lanes.text, lanes.text
    assert lane in by_lane.text, by_lane.text
    assert f'lane="{lane}"' in metrics.text


async def test_stalled_gemini_lane_flips_its_jobs_in_time(redis, redis_url, emulator, pagerduty, harness):
    pipeline = harness(gemini_settings(redis_url, emulator, pagerduty))
    emulator.configure(stall=[MODEL])
    stalled = await enqueue(pipeline, [6] * 4)
    await pipeline.run_until(all_terminal(pipeline.ledger, stalled), within_s=6)
    for job in await records(pipeline.ledger, stalled):
        assert job.state == "succeeded"
        assert job.route == "sync"
        assert job.completed_ms is not None
        assert job.completed_ms <= job.deadline_ms
        assert "flipped_ms" in job.raw  # flipped by the SLO tracker, not sent to sync at enqueue
    calls = [(c["method"], c["path"]) for c in emulator.requests()]
    assert sum(1 for m, p in calls if m == "POST" and p.endswith(":cancel")) == 1  # the emptied batch
    assert sum(1 for m, p in calls if p == f"/v1beta/models/{MODEL}:generateContent") == 4


async def test_gemini_batch_expiring_at_48_hours_sends_its_jobs_on(
    redis, redis_url, emulator, pagerduty, harness
):
    """A batch stuck PENDING expires at 48 h with no results; its jobs (due in 72 h) go on and end."""
    pipeline = harness(gemini_settings(redis_url, emulator, pagerduty))
    emulator.configure(stall=[MODEL])
    job_ids = await enqueue(pipeline, [72 * 3600] * 3)

    async def submitted() -> bool:
        return all(r.state == "batched" for r in await records(pipeline.ledger, job_ids))

    await pipeline.run_until(submitted, within_s=5)
    (first,) = {r.raw["batch_id"].decode() for r in await records(pipeline.ledger, job_ids)}
    provider_batch_id = (await redis.hget(keys.batch(first), "provider_batch_id")).decode()
    pipeline.clock.advance(48 * 3600)
    emulator.set_clock(pipeline.clock.seconds)
    emulator.configure(stall=[])  # later batches run; the first one has expired by now
    async with httpx.AsyncClient(base_url=emulator.url, headers={"x-goog-api-key": "k"}) as client:
        seen = await client.get(f"/v1beta/batches/{provider_batch_id}")
    assert seen.json()["metadata"]["state"] == "BATCH_STATE_EXPIRED"
    assert "output" not in seen.json()["metadata"]  # nothing to ingest
    await pipeline.run_until(all_terminal(pipeline.ledger, job_ids), within_s=30)
    for job in await records(pipeline.ledger, job_ids):
        assert job.state == "succeeded"
        assert job.completed_ms is not None
        assert pipeline.start_ms + 48 * 3600_000 <= job.completed_ms <= job.deadline_ms
        assert job.raw.get("batch_id") != first.encode() or job.route != "batch"
    calls = [(c["method"], c["path"]) for c in emulator.requests()]
    assert ("DELETE", f"/v1beta/batches/{provider_batch_id}") in calls  # ingested (nothing), then deleted
    assert not any(path.startswith("/download/") for _, path in calls)


async def test_a_create_refused_for_quota_is_retried_without_failing_jobs(
    redis, redis_url, emulator, pagerduty, harness
):
    """Gemini answers a create over its enqueued-token quota 429 RESOURCE_EXHAUSTED with a retry-after
    longer than a call waits, so the submission task itself tries again later, its jobs held."""
    pipeline = harness(gemini_settings(redis_url, emulator, pagerduty))
    create = f"POST /v1beta/models/{MODEL}:batchGenerateContent"
    emulator.configure(fail_next={create: [429, 429]})
    job_ids = await enqueue(pipeline, [30] * 2)
    await pipeline.run_until(all_terminal(pipeline.ledger, job_ids), within_s=30)
    for job in await records(pipeline.ledger, job_ids):
        assert job.state == "succeeded"
        assert job.route == "batch"
    creates = [c["status"] for c in emulator.requests() if c["path"].endswith(":batchGenerateContent")]
    assert creates == [429, 429, 200]
