"""Client batches behind the SLO tracker and the lane planner: a 1 h window kept through flips on a
stalled lane, and two tenants' lines pooled into one provider batch (each sees only its own)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from config.settings import CompatSettings, SchedulerSettings
from scheduler.compat.intake import BatchIntake, draft
from scheduler.compat.lines import Line, LineErrors, jobs_for
from scheduler.ledger import keys
from tests import test_slo_e2e as slo
from tests.api.harness import ADMIN
from tests.compat.support import CHAT, compat_app, compat_settings, jsonl, openai_sdk, provider_batch_creates

pytestmark = pytest.mark.timeout(900)

emulator_url = slo.emulator_url
emulator = slo.emulator
pagerduty = slo.pagerduty
harness = slo.harness

# The 1 h test ticks every 10 virtual seconds (an hour is 360 steps, not 36,000); the flip decision
# takes the tick into account (its lead is whole ticks), so the coarser clock changes no outcome.
COARSE_TICK_S = 10.0


async def _coarse_step(pipeline: slo.Pipeline) -> None:
    report = await pipeline.scheduler.tick(pipeline.clock.seconds)
    assert not report.errors, report.errors
    await pipeline.settle()
    pipeline.clock.advance(COARSE_TICK_S)
    pipeline.emulator.set_clock(pipeline.clock.seconds)


async def test_1h_window_on_a_lane_stalled_from_the_start_completes_within_the_hour_by_flips(
    redis, redis_url, emulator, pagerduty, harness
):
    base = compat_settings(redis_url, emulator, pagerduty)
    coarse = SchedulerSettings(
        tick_interval_s=COARSE_TICK_S, poll_initial_s=COARSE_TICK_S, poll_max_s=COARSE_TICK_S, poll_backoff=1
    )
    settings = base.model_copy(update={"scheduler": coarse})
    pipeline = harness(settings)
    emulator.configure(stall=["gpt-4o-mini"])
    custom_ids = [f"line-{i}" for i in range(200)]
    async with compat_app(settings, redis, pipeline) as app, openai_sdk(app) as sdk:
        uploaded = await sdk.files.create(file=("input.jsonl", jsonl(custom_ids)), purpose="batch")
        batch = await sdk.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="1h")  # type: ignore[arg-type]
        assert batch.expires_at - batch.created_at == 3600
        while (current := await sdk.batches.retrieve(batch.id)).status == "in_progress":
            assert pipeline.clock.seconds <= batch.expires_at, "the window passed with lines unanswered"
            await _coarse_step(pipeline)
        assert current.status == "completed"
        assert current.completed_at is not None
        assert current.completed_at - current.created_at <= 3600
        assert current.request_counts is not None
        assert (current.request_counts.completed, current.request_counts.failed) == (200, 0)
        assert current.output_file_id is not None
        output = [
            json.loads(line) for line in (await sdk.files.content(current.output_file_id)).text.splitlines()
        ]
    assert sorted(line["custom_id"] for line in output) == sorted(custom_ids)
    job_ids = [line["response"]["request_id"] for line in output]
    for job in await slo.records(pipeline.ledger, job_ids):
        assert job.route == "sync"
        assert "flipped_ms" in job.raw  # waited on the stalled batch, then flipped by the SLO tracker
        assert job.completed_ms is not None
        assert job.completed_ms <= job.deadline_ms
    assert len(provider_batch_creates(emulator)) >= 1  # the lines did go out by batch first


async def test_two_tenants_lines_for_one_model_go_out_in_one_provider_batch(
    redis, redis_url, emulator, pagerduty, harness
):
    settings = compat_settings(redis_url, emulator, pagerduty)
    pipeline = harness(settings)
    async with (
        compat_app(settings, redis, pipeline) as app,
        openai_sdk(app, "acme-key") as acme,
        openai_sdk(app, "globex-key") as globex,
    ):
        created = {}
        for name, sdk in (("acme", acme), ("globex", globex)):
            uploaded = await sdk.files.create(
                file=("in.jsonl", jsonl([f"{name}-{i}" for i in range(7)])), purpose="batch"
            )
            created[name] = await sdk.batches.create(
                input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h"
            )

        async def both_completed() -> bool:
            statuses = [
                (await sdk.batches.retrieve(created[n].id)).status
                for n, sdk in (("acme", acme), ("globex", globex))
            ]
            return statuses == ["completed", "completed"]

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=ADMIN) as operator:
            lanes = {lane["lane"]: lane for lane in (await operator.get("/v1/lanes")).json()["data"]}
        assert lanes["openai:gpt-4o-mini:/v1/chat/completions"]["queued"] == 14  # both tenants' lines
        await pipeline.run_until(both_completed, within_s=20)
        [provider_batch] = provider_batch_creates(emulator)  # one batch for both tenants' lines
        for name, sdk, other in (("acme", acme, "globex"), ("globex", globex, "acme")):
            done = await sdk.batches.retrieve(created[name].id)
            assert done.output_file_id is not None
            text = (await sdk.files.content(done.output_file_id)).text
            assert sorted(json.loads(line)["custom_id"] for line in text.splitlines()) == sorted(
                f"{name}-{i}" for i in range(7)
            )
            assert [b.id for b in (await sdk.batches.list()).data] == [created[name].id]
            with pytest.raises(openai.NotFoundError):
                await sdk.batches.retrieve(created[other].id)
            other_done = created[other].id
            with pytest.raises(openai.NotFoundError):
                await sdk.files.content(f"file-{other_done}-output")
    assert provider_batch["path"] == "/v1/batches"
    lane_jobs = [
        (await pipeline.ledger.get(job_id.decode()))
        for tenant in ("acme", "globex")
        for job_id in await redis.zrange(keys.tenant_jobs(tenant), 0, -1)
    ]
    assert {job.batch_id for job in lane_jobs if job is not None} != {None}
    assert len({job.batch_id for job in lane_jobs if job is not None}) == 1


async def test_a_create_that_died_is_cancelled_by_the_reconcile_pass_without_its_owner(
    redis, redis_url, emulator, pagerduty, harness
):
    """The create's process died after enqueueing 2 of its 3 lines: the batch stays ``validating``
    until ``compat.stale_create_s`` has passed, then the reconcile pass cancels it (its jobs
    cancelled, the line never made counted cancelled), with no call from its owner."""
    base = compat_settings(redis_url, emulator, pagerduty)
    settings = base.model_copy(
        update={
            "scheduler": base.scheduler.model_copy(update={"reconcile_interval_s": 1.0}),
            "compat": CompatSettings(stale_create_s=5),
        }
    )
    pipeline = harness(settings)
    emulator.configure(stall=["gpt-4o-mini"])  # its jobs would otherwise end on their own
    async with compat_app(settings, redis, pipeline) as app, openai_sdk(app) as sdk:
        intake: BatchIntake = app.state.batch_intake
        uploaded = await sdk.files.create(file=("in.jsonl", jsonl(["a", "b", "c"])), purpose="batch")
        batch = draft(
            "openai",
            "acme",
            endpoint=CHAT,
            input_file_id=uploaded.id,
            window="24h",
            window_s=86400,
            metadata=None,
            total=3,
            now_ms=pipeline.clock.ms,
        )
        lines = [Line(n, cid, json.loads(jsonl([cid]))["body"]) for n, cid in enumerate("ab", start=1)]
        jobs = jobs_for(lines, batch, settings, LineErrors(), now_ms=pipeline.clock.ms)
        await intake._record(batch)
        await intake.batches.add_lines(batch.id, [job.id for job in jobs])
        await intake.ledger.enqueue_many(jobs)  # and here the create's process died
        live = await sdk.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")

        async def ended() -> bool:
            return (await sdk.batches.retrieve(batch.id)).status != "validating"

        await pipeline.run_for(4)
        assert (await sdk.batches.retrieve(batch.id)).status == "validating"  # not stale yet
        await pipeline.run_until(ended, within_s=5)
        assert pipeline.clock.ms - batch.created_ms >= 5000
        cancelled = await sdk.batches.retrieve(batch.id)
        assert cancelled.status == "cancelled"
        assert cancelled.request_counts is not None
        assert (cancelled.request_counts.total, cancelled.request_counts.failed) == (3, 3)
        assert [r.state for r in await intake.ledger.get_many([j.id for j in jobs])] == ["cancelled"] * 2  # type: ignore[union-attr]
        # A batch whose create finished is left alone, and the index keeps no ended batch.
        assert (await sdk.batches.retrieve(live.id)).status == "in_progress"
    assert await redis.zcard(keys.CLIENT_BATCHES_VALIDATING) == 0
