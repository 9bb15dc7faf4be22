"""What the workers' spans say: GenAI token counts under either provider's names; log lines name their span."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from config.tracing import NO_SPAN, NOOP_SPAN, OFF, Tracing, add_trace_ids, context_of, phase
from scheduler.ledger.jobs import JobRecord
from workers import traces


def test_openai_usage_names_map_to_genai_token_counts():
    said = traces.usage_attributes({"prompt_tokens": 12, "completion_tokens": 7}, {"x-request-id": "req_1"})
    assert said == {
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 7,
        "batchshift.provider_request_id": "req_1",
    }


def test_anthropic_usage_names_map_to_genai_token_counts():
    said = traces.usage_attributes({"input_tokens": 3, "output_tokens": 5}, {"request-id": "req_a"})
    assert said == {
        "gen_ai.usage.input_tokens": 3,
        "gen_ai.usage.output_tokens": 5,
        "batchshift.provider_request_id": "req_a",
    }


def test_no_usage_says_nothing():
    assert traces.usage_attributes(None, {}) == {}


def test_embeddings_are_their_own_operation():
    assert traces.request_attributes("openai", "/v1/embeddings", "text-embedding-3-small") == {
        "gen_ai.operation.name": "embeddings",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "text-embedding-3-small",
    }


def test_a_malformed_traceparent_is_no_parent():
    assert context_of("00-zz-yy-01") is None
    assert context_of("") is None


def test_log_lines_inside_a_span_carry_its_ids():
    tracing = Tracing(TracerProvider())
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with tracing.span("work", parent=parent) as span:
        event = add_trace_ids(None, "info", {"event": "x"})
        own = span.headers()["traceparent"]
    assert event["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert own.split("-")[2] == event["span_id"]
    assert "trace_id" not in add_trace_ids(None, "info", {"event": "y"})


def test_off_records_nothing():
    assert not OFF.enabled
    with OFF.span("work", parent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01") as span:
        assert span.headers() == {}
        assert "trace_id" not in add_trace_ids(None, "info", {"event": "z"})


def test_a_phase_outside_any_span_is_the_shared_no_op():
    """Tracing off (or no traced operation open): a phase allocates nothing and records nothing."""
    assert phase("batch.spool") is phase("job.store")
    with phase("batch.spool") as span:
        assert span is NOOP_SPAN
    with OFF.span("work"), phase("job.store") as inner:
        assert inner is NOOP_SPAN


def test_a_phase_is_a_child_of_the_span_open_in_its_task():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider)
    with tracing.span("batch.submit"):
        with phase("batch.spool", **{"batchshift.requests": 3}):
            pass
        with phase("batch.create"):
            pass
    with phase("after"):  # the span has ended: no phase to open
        pass
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"batch.submit", "batch.spool", "batch.create"}
    submit = spans["batch.submit"].context
    for name in ("batch.spool", "batch.create"):
        assert spans[name].parent is not None
        assert spans[name].parent.span_id == submit.span_id
    assert spans["batch.spool"].attributes == {"batchshift.requests": 3}


def test_a_sync_call_span_is_built_only_when_tracing_is_on():
    job = JobRecord.from_hash(
        {
            b"id": b"job_1",
            b"endpoint": b"/v1/chat/completions",
            b"model": b"gpt-4o-mini",
            b"deadline_ms": b"2000",
            b"created_ms": b"1000",
            b"traceparent": b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        }
    )
    assert traces.sync_call_span(OFF, "openai", job, "sync", None) is NO_SPAN
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with traces.sync_call_span(Tracing(provider), "openai", job, "flex", "flex") as span:
        assert span is not NOOP_SPAN
    [call] = exporter.get_finished_spans()
    assert call.name == "chat gpt-4o-mini"
    assert call.parent is not None
    assert format(call.parent.span_id, "016x") == "b7ad6b7169203331"
    assert call.attributes is not None
    assert call.attributes["batchshift.route"] == "flex"
    assert call.attributes["gen_ai.request.model"] == "gpt-4o-mini"
