"""Sibling lanes end to end: an OpenAI lane and an Azure Global Batch deployment of the same model on
the emulator, the scheduler's tick and an arq worker on one virtual clock (the pipeline of
:mod:`tests.test_slo_e2e`).

A stalled OpenAI lane's jobs move to the Azure sibling's batches and finish there on time at batch
price, none through sync; a lane whose quota is full (a create refused with
``token_limit_exceeded``) hands its queue to the sibling; with no sibling that fits, flips run as
before.
"""

from __future__ import annotations

import orjson
import pytest

from config.settings import ProviderSettings, Settings
from scheduler.ledger import keys
from scheduler.ledger.ledger import day_of
from tests import test_slo_e2e as slo
from tests.scheduler.slo_support import ENDPOINT, LANE, MODEL
from tests.test_azure_e2e import azure_calls
from tests.test_slo_e2e import FAST_HTTP, all_terminal, e2e_settings, records

pytestmark = pytest.mark.timeout(600)

DEPLOYMENT = "gpt-4o-mini-batch"  # an Azure Global Batch deployment of gpt-4o-mini
SIBLING = f"azure:{DEPLOYMENT}:{ENDPOINT}"

emulator_url = slo.emulator_url
emulator = slo.emulator
pagerduty = slo.pagerduty
harness = slo.harness


def sibling_settings(redis_url, emulator, pagerduty, **provider: object) -> Settings:
    """The SLO pipeline's settings with an Azure account, and its deployment as the OpenAI lane's sibling."""
    settings = e2e_settings(redis_url, emulator, pagerduty)
    azure = ProviderSettings(
        kind="azure_openai",
        base_url=f"{emulator.url}/openai",
        api_key="azure-key",
        api_version="2024-10-21",
        deployments={DEPLOYMENT: MODEL},
        http=FAST_HTTP,
        min_poll_interval_s=0,  # the pipeline's 0.1 s polls (Azure's floor is a minute)
    )
    openai = settings.providers["openai"].model_copy(update=provider)
    return Settings(
        **(
            settings.model_dump()
            | {"providers": {"openai": openai, "azure": azure}, "sibling_lanes": [[LANE, SIBLING]]}
        )
    )


def sync_calls(emulator) -> list[dict]:
    return [
        r for r in emulator.requests() if r["method"] == "POST" and r["path"].endswith("/chat/completions")
    ]


async def test_stalled_lane_jobs_finish_on_time_through_the_sibling_at_batch_price(
    redis, redis_url, emulator, pagerduty, harness
):
    pipeline = harness(sibling_settings(redis_url, emulator, pagerduty))
    emulator.configure(stall=[MODEL])  # OpenAI's gpt-4o-mini batches make no progress
    job_ids = await pipeline.enqueue([20] * 4)
    await pipeline.run_until(all_terminal(pipeline.ledger, job_ids), within_s=20)

    for job in await records(pipeline.ledger, job_ids):
        assert (job.state, job.route, job.lane) == ("succeeded", "batch", SIBLING)
        assert job.completed_ms is not None
        assert job.completed_ms <= job.deadline_ms
        assert "flipped_ms" not in job.raw
        assert job.raw["relaned_from"].decode() == LANE
        assert job.raw["relaned_from_batch"]  # taken from the stalled OpenAI batch
        result = await pipeline.ledger.result(job.id)
        assert result is not None
        assert orjson.loads(result)["model"] == DEPLOYMENT  # the body named the deployment
        assert job.cost is not None  # priced as Azure's gpt-4o-mini, at batch price
        assert job.cost["actual_usd"] > 0
        assert job.cost["actual_usd"] == pytest.approx(job.cost["sync_equivalent_usd"] / 2)
    assert sync_calls(emulator) == []  # none through flex or sync
    assert azure_calls(emulator, "POST", "/openai/batches")
    cancels = [
        r
        for r in emulator.requests()
        if r["path"].startswith("/v1/batches/") and r["path"].endswith("/cancel")
    ]
    assert len(cancels) == 1  # the stalled OpenAI batch, once every job left it


async def test_a_full_quota_hands_the_queue_to_the_sibling(redis, redis_url, emulator, pagerduty, harness):
    """OpenAI refuses the create (enqueued-token limit): the lane is held for 600 s, and its queued
    jobs finish on the sibling within their 20 s instead."""
    settings = sibling_settings(redis_url, emulator, pagerduty)
    settings = Settings(
        **(
            settings.model_dump()
            | {"scheduler": settings.scheduler.model_copy(update={"token_limit_backoff_s": 600}).model_dump()}
        )
    )
    pipeline = harness(settings)
    emulator.configure(token_limit_exceeded=[MODEL])
    job_ids = await pipeline.enqueue([20] * 3)
    await pipeline.run_until(all_terminal(pipeline.ledger, job_ids), within_s=20)
    for job in await records(pipeline.ledger, job_ids):
        assert (job.state, job.route, job.lane) == ("succeeded", "batch", SIBLING)
        assert job.completed_ms is not None
        assert job.completed_ms <= job.deadline_ms
        assert "relaned_from_batch" not in job.raw  # from the queue: the refused batch gave them back
    assert sync_calls(emulator) == []


async def test_no_sibling_fits_a_tight_deadline_so_the_flip_runs_unchanged(
    redis, redis_url, emulator, pagerduty, harness
):
    """3.5 s deadlines: a moved job needs the sibling's flush lead, its 1 s prior turnaround and its
    2 s sync margin (3.2 s), which no longer fits once the OpenAI batch counts as stalled (past 2 s,
    twice the 1 s prior). The jobs flip to sync as they did before siblings."""
    pipeline = harness(sibling_settings(redis_url, emulator, pagerduty))
    emulator.configure(stall=[MODEL])
    job_ids = await pipeline.enqueue([3.5] * 3)
    await pipeline.run_until(all_terminal(pipeline.ledger, job_ids), within_s=6)
    for job in await records(pipeline.ledger, job_ids):
        assert (job.state, job.route, job.lane) == ("succeeded", "sync", LANE)
        assert job.completed_ms is not None
        assert job.completed_ms <= job.deadline_ms
        assert "relaned_from" not in job.raw
    total = await redis.hgetall(keys.agg_total(day_of(pipeline.start_ms), "acme"))
    assert total  # costs were recorded for the flipped jobs
