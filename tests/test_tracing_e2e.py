"""OpenTelemetry end to end: producers' traces through intake, a batch, a flip, a sync call and webhooks.

The API (in this process, over ASGI), the scheduler's tick, an arq worker and the emulator share
one virtual clock (the harness of tests/test_slo_e2e.py). Spans are exported over OTLP/HTTP to a
real receiver started here (tests/otlp.py) and decoded with ``opentelemetry-proto``; webhooks go
to a real receiver, whose recorded ``traceparent`` headers are checked against those spans.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from arq.worker import Worker
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto

from api.app import create_app
from config.settings import Settings, TracingSettings
from config.tracing import Tracing
from scheduler.ledger import keys
from scheduler.ledger.clock import ManualClock
from scheduler.ledger.tasks import create_pool
from scheduler.service import build_scheduler
from tests import test_slo_e2e as slo
from tests.api.harness import asgi, asgi_client
from tests.conftest import make_settings
from tests.otlp import (
    attrs,
    base_url,
    children,
    running_grpc_collector,
    running_http_collector,
    service_names,
    spans_of,
)
from tests.test_slo_e2e import SETTLE_POLL_S, Pipeline, all_terminal, e2e_settings, records
from tests.workers.receiver import Receiver, running_receiver
from workers.worker import worker_settings

pytestmark = pytest.mark.timeout(600)

HEALTHY, STALLED = "gpt-4.1-mini", "gpt-4o-mini"
GENAI = (
    "gen_ai.operation.name",
    "gen_ai.provider.name",
    "gen_ai.request.model",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
)
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # acme's, in tests/conftest.py


# The SLO end-to-end emulator and pager, shared by name.
emulator_url = slo.emulator_url
emulator = slo.emulator
pagerduty = slo.pagerduty


TICK_SAMPLE_EVERY = 3


@pytest.fixture
def collector() -> Iterator[Receiver]:
    """A real OTLP/HTTP receiver: records each export request (protobuf) and answers 200."""
    with running_http_collector() as receiver:
        yield receiver


def exporting_to(collector: Receiver, **settings: Any) -> TracingSettings:
    return TracingSettings(enabled=True, protocol="http/protobuf", endpoint=base_url(collector), **settings)


@pytest.fixture
def hooks() -> Iterator[Receiver]:
    with running_receiver(secrets=(SECRET,)) as receiver:
        yield receiver


def producer_traceparent() -> tuple[str, str, str]:
    """A producer's ``traceparent``, with its trace id and span id (hex)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


@pytest.fixture
async def traced(redis, redis_url, emulator, collector, pagerduty) -> AsyncIterator[dict[str, Any]]:
    """The API, scheduler and worker of one process sharing one exporting tracer."""
    base = e2e_settings(redis_url, emulator, pagerduty)
    settings = base.model_copy(
        update={
            "tracing": exporting_to(collector, tick_sample_every=TICK_SAMPLE_EVERY),
            "webhook_allowlist": ["127.0.0.0/8"],
        }
    )
    tracing = Tracing.from_settings(settings.tracing)
    pool = await create_pool(redis_url)
    clock = ManualClock(int(time.time() * 1000))  # the API stamps jobs with the real clock: start there
    emulator.set_clock(clock.seconds)
    scheduler = build_scheduler(settings, redis, pool, holder="otel", tracing=tracing)
    options = worker_settings(settings, clock=clock, tracing=tracing) | {"max_jobs": 1}
    worker = Worker(**options, poll_delay=SETTLE_POLL_S, handle_signals=False)
    pipeline = Pipeline(scheduler, worker, clock, emulator)
    app = create_app(settings, redis=redis, tracing=tracing)
    try:
        async with asgi(app, {"authorization": "Bearer acme-key"}) as api:
            yield {"pipeline": pipeline, "api": api, "tracing": tracing, "settings": settings}
    finally:
        await pipeline.close()
        await pool.aclose()
        tracing.shutdown()


async def enqueue(api: httpx.AsyncClient, model: str, deadline_in: float, url: str) -> tuple[str, str, str]:
    traceparent, trace_id, span_id = producer_traceparent()
    body = {
        "provider": "openai",
        "body": {"model": model, "messages": [{"role": "user", "content": "hi"}]},
        "deadline_in": deadline_in,
        "callback_url": url,
    }
    response = await api.post("/v1/jobs", json=body, headers={"traceparent": traceparent})
    assert response.status_code == 202, response.text
    return response.json()["id"], trace_id, span_id


async def test_one_trace_from_the_producer_to_its_webhook(redis, emulator, collector, hooks, traced):
    pipeline: Pipeline = traced["pipeline"]
    api: httpx.AsyncClient = traced["api"]
    emulator.configure(stall=[STALLED])
    jobs = [await enqueue(api, HEALTHY, 15, hooks.url) for _ in range(2)]
    jobs += [await enqueue(api, STALLED, 6, hooks.url) for _ in range(2)]
    job_ids = [j for j, _, _ in jobs]
    await pipeline.run_until(all_terminal(pipeline.ledger, job_ids), within_s=15)
    found = {r.id: r for r in await records(pipeline.ledger, job_ids)}
    assert [found[j].route for j in job_ids] == ["batch", "batch", "sync", "sync"]

    async def delivered() -> bool:
        return len(hooks.requests) >= len(jobs) and await redis.zcard(keys.WEBHOOKS_DUE) == 0

    await pipeline.run_until(delivered, within_s=10)
    assert traced["tracing"].flush()
    spans = spans_of(collector)
    trace_of = {job_id: trace_id for job_id, trace_id, _ in jobs}

    def named(name: str, trace_id: str) -> list[SpanProto]:
        return [s for s in spans if s.name == name and s.trace_id.hex() == trace_id]

    for job_id, trace_id, producer_span in jobs:
        # Intake: a child of the producer's span, in the producer's trace.
        [intake] = named("job.intake", trace_id)
        assert intake.parent_span_id.hex() == producer_span
        assert attrs(intake)["batchshift.job_id"] == job_id
        # Its phases, in order, its first children (the job's later spans follow).
        phases = [c.name for c in children(spans, intake)]
        assert phases[:3] == ["job.validate", "job.admit", "job.store"]
        assert not {"job.validate", "job.admit", "job.store"} & set(phases[3:])
        # The stored context is the intake span's.
        record = found[job_id]
        assert record.traceparent == f"00-{trace_id}-{intake.span_id.hex()}-01"
        # The webhook attempt continues the trace, and its request carries that attempt's context.
        [hook_span] = named("webhook.deliver", trace_id)
        assert hook_span.parent_span_id == intake.span_id
        [request] = [r for r in hooks.requests if r.headers["webhook-id"] == f"msg_{job_id}"]
        assert request.verified
        assert request.headers["traceparent"] == f"00-{trace_id}-{hook_span.span_id.hex()}-01"

    for job_id in job_ids[2:]:  # the flipped jobs' sync calls: GenAI attributes from the provider's usage
        [flip] = named("job.flip", trace_of[job_id])
        [intake] = named("job.intake", trace_of[job_id])
        assert flip.parent_span_id == intake.span_id
        assert attrs(flip)["batchshift.batch_id"] == found[job_id].batch_id
        [call] = named(f"chat {STALLED}", trace_of[job_id])
        assert call.kind == SpanProto.SPAN_KIND_CLIENT
        usage = found[job_id].usage
        assert usage is not None
        said = attrs(call)
        assert {k: said.get(k) for k in GENAI} == {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": STALLED,
            "gen_ai.usage.input_tokens": usage["prompt_tokens"],
            "gen_ai.usage.output_tokens": usage["completion_tokens"],
        }
        assert said["gen_ai.usage.input_tokens"] > 0
        assert said["batchshift.job_id"] == job_id
    for job_id in job_ids[:2]:  # the batched jobs made no sync call and never flipped
        assert not named(f"chat {HEALTHY}", trace_of[job_id])
        assert not named("job.flip", trace_of[job_id])

    # Batch spans: in no job's trace, linked to the trace of every job they carried.
    batch_spans = [s for s in spans if s.name.startswith("batch.")]
    assert {s.name for s in batch_spans} >= {"batch.submit", "batch.poll", "batch.ingest"}
    assert not {s.trace_id.hex() for s in batch_spans} & set(trace_of.values())
    for batch_jobs in (job_ids[:2], job_ids[2:]):  # the healthy lane's batch, the stalled (cancelled) one
        [batch_id] = {found[j].batch_id for j in batch_jobs}
        traces = {trace_of[j] for j in batch_jobs}
        for name in ("batch.submit", "batch.ingest"):
            [span] = [
                s for s in batch_spans if s.name == name and attrs(s)["batchshift.batch_id"] == batch_id
            ]
            assert {link.trace_id.hex() for link in span.links} == traces, name
        # The submission's phases (OpenAI: the input file is uploaded, then the batch created on it).
        [submit] = [
            s for s in batch_spans if s.name == "batch.submit" and attrs(s)["batchshift.batch_id"] == batch_id
        ]
        phases = children(spans, submit)
        assert [p.name for p in phases] == ["batch.spool", "batch.upload", "batch.create"]
        assert attrs(phases[0])["batchshift.requests"] == len(batch_jobs)
        assert attrs(phases[1])["batchshift.input_bytes"] == attrs(phases[0])["batchshift.input_bytes"] > 0

    # Ticks: the first the scheduler led, then one in TICK_SAMPLE_EVERY, each a trace of its own
    # with a span per step, in the tick's order.
    scheduler = pipeline.scheduler
    ticks = [s for s in spans if s.name == "scheduler.tick"]
    assert scheduler.ticks_led > 2 * TICK_SAMPLE_EVERY
    assert len(ticks) == (scheduler.ticks_led + TICK_SAMPLE_EVERY - 1) // TICK_SAMPLE_EVERY
    step_spans = [f"tick.{name}" for name, _ in scheduler.steps]
    for tick in ticks:
        assert tick.parent_span_id == b""
        assert tick.trace_id.hex() not in trace_of.values()
        assert [c.name for c in children(spans, tick)] == step_spans


async def test_tracing_off_stores_no_trace_context(redis, redis_url):
    """Off by default: a producer's traceparent is neither stored nor carried on."""
    settings = make_settings(redis_url)
    assert not settings.tracing.enabled
    async with asgi_client(settings, redis) as api:
        traceparent, _, _ = producer_traceparent()
        body = {"provider": "openai", "body": {"model": "m", "messages": []}, "deadline_in": 60}
        response = await api.post("/v1/jobs", json=body, headers={"traceparent": traceparent})
        assert response.status_code == 202
        stored = await redis.hgetall(keys.job(response.json()["id"]))
    assert b"state" in stored
    assert b"traceparent" not in stored


async def test_a_job_without_traceparent_starts_its_own_trace(redis, redis_url, collector):
    """The API builds its own tracer from settings (as ``batchshift api`` does) and flushes it on exit."""
    settings: Settings = make_settings(redis_url, tracing=exporting_to(collector))
    async with asgi(create_app(settings, redis=redis), {"authorization": "Bearer acme-key"}) as api:
        body = {"provider": "openai", "body": {"model": "m", "messages": []}, "deadline_in": 60}
        response = await api.post("/v1/jobs", json=body)
        assert response.status_code == 202
    stored = await redis.hget(keys.job(response.json()["id"]), "traceparent")
    [intake] = [s for s in spans_of(collector) if s.name == "job.intake"]
    assert intake.parent_span_id == b""
    # A new trace: sampled, and (W3C level 2) its trace id flagged random.
    assert stored is not None
    assert stored.decode().startswith(f"00-{intake.trace_id.hex()}-{intake.span_id.hex()}-")


async def test_every_item_of_a_bulk_request_joins_the_requests_trace(redis, redis_url, collector):
    settings: Settings = make_settings(redis_url, tracing=exporting_to(collector))
    tracing = Tracing.from_settings(settings.tracing)
    traceparent, trace_id, producer_span = producer_traceparent()
    item = {"provider": "openai", "body": {"model": "m", "messages": []}, "deadline_in": 60}
    try:
        app = create_app(settings, redis=redis, tracing=tracing)
        async with asgi(app, {"authorization": "Bearer acme-key"}) as api:
            response = await api.post(
                "/v1/jobs/bulk",
                json={"jobs": [item, item, {"provider": "nope"}]},
                headers={"traceparent": traceparent},
            )
            assert response.status_code == 200
        assert tracing.flush()
    finally:
        tracing.shutdown()
    results = response.json()["results"]
    assert [r["status"] for r in results] == [202, 202, 422]
    spans = spans_of(collector)
    [intake] = [s for s in spans if s.name == "job.intake"]
    assert intake.trace_id.hex() == trace_id
    assert intake.parent_span_id.hex() == producer_span
    # One span per phase for the whole request, saying how many items reached it.
    phases = children(spans, intake)
    assert [(p.name, attrs(p)["batchshift.items"]) for p in phases] == [
        ("job.validate", 3),
        ("job.admit", 2),
        ("job.store", 2),
    ]
    for entry in results[:2]:
        stored = await redis.hget(keys.job(entry["job"]["id"]), "traceparent")
        assert stored == f"00-{trace_id}-{intake.span_id.hex()}-01".encode()


async def test_spans_export_over_grpc_when_the_standard_variables_say_so(redis, redis_url, monkeypatch):
    """``OTEL_EXPORTER_OTLP_PROTOCOL=grpc`` and ``OTEL_EXPORTER_OTLP_ENDPOINT`` alone: the API's
    spans reach a real gRPC OTLP receiver, intake with its phases, in the producer's trace."""
    with running_grpc_collector() as collector:
        monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", raising=False)
        monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "batchshift-grpc")
        settings: Settings = make_settings(redis_url, tracing=TracingSettings(enabled=True))
        assert settings.tracing.protocol == "grpc"
        traceparent, trace_id, producer_span = producer_traceparent()
        body = {"provider": "openai", "body": {"model": "m", "messages": []}, "deadline_in": 60}
        async with asgi(create_app(settings, redis=redis), {"authorization": "Bearer acme-key"}) as api:
            response = await api.post("/v1/jobs", json=body, headers={"traceparent": traceparent})
            assert response.status_code == 202
        # Leaving the app shut its tracer down, which exports what it holds before returning.
        exports = collector.exports()
    assert service_names(exports) == {"batchshift-grpc"}
    spans = spans_of(exports)
    [intake] = [s for s in spans if s.name == "job.intake"]
    assert intake.trace_id.hex() == trace_id
    assert intake.parent_span_id.hex() == producer_span
    assert attrs(intake)["batchshift.job_id"] == response.json()["id"]
    assert [c.name for c in children(spans, intake)] == ["job.validate", "job.admit", "job.store"]


async def test_the_sampler_is_the_sdks_read_from_otel_traces_sampler(redis, redis_url, monkeypatch):
    """``OTEL_TRACES_SAMPLER`` is honoured as the SDK reads it: ``always_off`` exports no span of
    the jobs it takes, while ``always_on`` (the same request) exports its intake span."""
    exported = {}
    for sampler in ("always_off", "always_on"):
        with running_grpc_collector() as collector:
            monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", raising=False)
            monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint)
            monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
            settings: Settings = make_settings(redis_url, tracing=TracingSettings(enabled=True))
            body = {"provider": "openai", "body": {"model": "m", "messages": []}, "deadline_in": 60}
            async with asgi(create_app(settings, redis=redis), {"authorization": "Bearer acme-key"}) as api:
                response = await api.post("/v1/jobs", json=body)
                assert response.status_code == 202  # sampling never changes what the API does
            exported[sampler] = [s.name for s in spans_of(collector.exports())]
    assert exported["always_off"] == []
    assert "job.intake" in exported["always_on"]
