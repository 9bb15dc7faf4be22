"""Sibling failover against real Redis: the guarded relane step, the body adapted to the sibling's
model, and a moved job's late answer from its stalled batch counted as duplicate spend."""

from __future__ import annotations

import orjson
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from config.settings import ProviderSettings, SloSettings
from config.tracing import Tracing
from scheduler.costs import metrics
from scheduler.ledger import keys
from scheduler.ledger.ledger import Finish, Ledger, Relane, day_of
from scheduler.slo.health import read_health
from scheduler.slo.prediction import live_batches, predict_lane
from scheduler.slo.sibling_plan import LaneLoad, Sibling, stall_limit_s
from scheduler.slo.siblings import Failover, adapted_body, lane_parts
from tests.conftest import make_settings
from tests.scheduler.slo_support import ENDPOINT, LANE, MODEL, enqueue, new_job, submitted_batch

NOW = 1_800_000_000_000
DEPLOYMENT = "gpt-4o-mini-batch"
SIBLING = f"azure:{DEPLOYMENT}:{ENDPOINT}"


def settings_with_sibling(redis_url):
    settings = make_settings(
        redis_url, slo=SloSettings(prior_turnaround_s=10, default_sync_latency_s=1, sync_retry_allowance=2)
    )
    azure = ProviderSettings(
        kind="azure_openai",
        base_url="http://127.0.0.1:9/openai",
        api_key="k",
        deployments={DEPLOYMENT: MODEL},
    )
    return settings.model_copy(
        update={"providers": settings.providers | {"azure": azure}, "sibling_lanes": [[LANE, SIBLING]]}
    )


def relane(job_id: str, **kw) -> Relane:
    return Relane(job_id, LANE, SIBLING, "azure", DEPLOYMENT, ENDPOINT, **kw)


def test_lane_parts_keep_a_model_with_colons():
    assert lane_parts("openai:ft:gpt-4o-mini:acme::x1:/v1/chat/completions") == (
        "openai",
        "ft:gpt-4o-mini:acme::x1",
        "/v1/chat/completions",
    )


def test_the_body_names_the_siblings_model():
    body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
    assert orjson.loads(adapted_body(body, DEPLOYMENT) or b"") == {
        "model": DEPLOYMENT,
        "messages": [{"role": "user", "content": "hi"}],
    }
    assert adapted_body(body, "gpt-4o-mini") is None  # already names it
    assert adapted_body(b'{"contents":[]}', DEPLOYMENT) is None  # the model is in the path


async def test_relane_moves_a_queued_job_to_the_siblings_queue(redis, redis_url):
    ledger = Ledger(redis)
    (job_id,) = await enqueue(ledger, NOW, [60])
    body = b'{"model":"gpt-4o-mini-batch","messages":[]}'
    assert await ledger.relane([relane(job_id, body=body)], NOW + 1) == ["ok"]
    job = await ledger.get(job_id)
    assert (job.state, job.lane, job.provider, job.model, job.body) == (
        "queued",
        SIBLING,
        "azure",
        DEPLOYMENT,
        body,
    )
    assert job.size == len(body)
    assert await redis.zcard(keys.lane_queue(LANE)) == 0
    assert int(await redis.get(keys.lane_bytes(LANE))) == 0
    assert await redis.zscore(keys.lane_queue(SIBLING), job_id) == job.deadline_ms
    assert int(await redis.get(keys.lane_bytes(SIBLING))) == len(body)
    assert await redis.hget(keys.lane_meta(SIBLING), "provider") == b"azure"
    assert await redis.zscore(keys.LANES_ACTIVE, SIBLING) is not None
    assert await redis.hget(keys.lane_metrics(LANE), "relaned") == b"1"
    exported = metrics.render(await metrics.snapshot(redis, make_settings(redis_url), NOW)).decode()
    assert f'batchshift_jobs_relaned_total{{lane="{LANE}"}} 1.0' in exported
    # Guarded: moved once, it is no longer the first lane's to move, nor any lane's.
    assert await ledger.relane([relane(job_id)], NOW + 2) == ["skip:relaned"]
    back = Relane(job_id, SIBLING, LANE, "openai", MODEL, ENDPOINT)
    assert await ledger.relane([back], NOW + 3) == ["skip:relaned"]
    assert (await ledger.get(job_id)).lane == SIBLING


async def test_a_moved_jobs_answer_from_its_stalled_batch_is_duplicate_spend(redis, redis_url):
    settings = settings_with_sibling(redis_url)
    ledger = Ledger(redis)
    (job_id,) = await enqueue(ledger, NOW, [3600])
    batch_id = await submitted_batch(redis, settings, NOW)
    assert await ledger.relane([relane(job_id, from_states=("batched",), batch_id="other")], NOW) == [
        "skip:batched"
    ]
    assert await ledger.relane([relane(job_id, from_states=("batched",), batch_id=batch_id)], NOW) == ["ok"]
    job = await ledger.get(job_id)
    assert job.raw["relaned_from_batch"].decode() == batch_id
    codes = await ledger.finish(
        [Finish(job_id, "succeeded", "batch", batch_id=batch_id, result=b"{}", actual_usd=0.5, billed=True)],
        NOW + 5_000,
    )
    assert codes == ["skip:queued"]
    total = await redis.hgetall(keys.agg_total(day_of(NOW + 5_000), "acme"))
    assert float(total[b"duplicate_usd"]) == 0.5


@pytest.mark.parametrize(("elapsed_s", "moved"), [(15, 0), (25, 1)])
async def test_failover_takes_a_stalled_batchs_jobs_once_past_the_lagging_limit(
    redis, redis_url, elapsed_s, moved
):
    """Prior 10 s, lagging factor 2: a batch 25 s in flight is stalled, one 15 s in is not."""
    settings = settings_with_sibling(redis_url)
    ledger = Ledger(redis)
    (job_id,) = await enqueue(ledger, NOW, [3600])
    batch_id = await submitted_batch(redis, settings, NOW)
    now = NOW + elapsed_s * 1000
    health = await read_health(redis, settings, LANE, "openai", now)
    live = await live_batches(redis)
    prediction = await predict_lane(redis, settings, health, live.get(LANE, []), now)
    load = LaneLoad(LANE, "healthy", stall_limit_s(10.0, 10.0, 2.0), float(elapsed_s), held=False)

    async def lookup(name: str) -> Sibling:
        return Sibling(name, healthy=True, completion_s=60.0)

    report = await Failover(redis, ledger, settings).run(load, prediction, lookup, now)
    assert report.total == report.from_batches == moved
    job = await ledger.get(job_id)
    assert job.lane == (SIBLING if moved else LANE)
    assert (job.state, job.batch_id) == (("queued", None) if moved else ("batched", batch_id))
    if moved:  # no longer the batch's for the flip step to flip or wait for
        assert await redis.zscore(keys.batch_deadlines(batch_id), job_id) is None


async def test_a_moved_job_gets_a_relane_span_in_its_trace(redis, redis_url):
    settings = settings_with_sibling(redis_url)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    ledger = Ledger(redis)
    job = new_job(NOW, 3600)
    job.traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    await ledger.enqueue(job)
    health = await read_health(redis, settings, LANE, "openai", NOW)
    prediction = await predict_lane(redis, settings, health, [], NOW)
    load = LaneLoad(LANE, "lagging", 20.0, 0.0, held=False)

    async def lookup(name: str) -> Sibling:
        return Sibling(name, healthy=True, completion_s=60.0)

    report = await Failover(redis, ledger, settings, Tracing(provider)).run(load, prediction, lookup, NOW)
    assert report.moved == {SIBLING: 1}
    [span] = exporter.get_finished_spans()
    assert span.name == "job.relane"
    assert span.context.trace_id == int("0af7651916cd43dd8448eb211c80319c", 16)
    assert span.attributes["batchshift.sibling_lane"] == SIBLING
