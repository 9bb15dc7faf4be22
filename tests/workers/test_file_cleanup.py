"""Provider file cleanup: input files once their batch ended, output and error files once ingested."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from config.settings import SchedulerSettings, Settings, SloSettings, WorkerSettings
from emulator.server import EmulatorControl
from scheduler.ledger import keys
from tests.conftest import make_settings
from tests.workers.batch_harness import enqueue_jobs, make_ctx, run_batch
from tests.workers.conftest import FAST_HTTP, openai_settings
from workers.http import build_client
from workers.tasks.batches import reconcile_batches
from workers.tasks.ingest import ingest_batch


def cleanup_settings(redis_url: str, url: str, **provider: Any) -> Settings:
    return make_settings(
        redis_url,
        providers={"openai": openai_settings(url, **provider)},
        worker=WorkerSettings(ingest_chunk=10),
        slo=SloSettings(prior_turnaround_s=1.0),
        scheduler=SchedulerSettings(max_attempts=3),
    )


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with build_client(FAST_HTTP) as client:
        yield client


@pytest.fixture
def sdk(emulator: EmulatorControl) -> openai.OpenAI:
    return openai.OpenAI(base_url=emulator.url + "/v1", api_key="sk-test", max_retries=0)


def files_at(sdk: openai.OpenAI) -> list[str]:
    """The files the emulator holds, counted through the official SDK."""
    return [f.id for f in sdk.files.list()]


async def test_the_sdk_deletes_a_file_at_the_emulator(sdk: openai.OpenAI) -> None:
    uploaded = sdk.files.create(file=("in.jsonl", b'{"custom_id": "a"}\n'), purpose="batch")
    assert files_at(sdk) == [uploaded.id]
    deleted = sdk.files.delete(uploaded.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (uploaded.id, "file", True)
    assert files_at(sdk) == []
    with pytest.raises(openai.NotFoundError):
        sdk.files.delete(uploaded.id)


async def test_input_output_and_error_files_are_deleted_after_ingestion(
    redis_url, redis, emulator: EmulatorControl, http, sdk: openai.OpenAI
) -> None:
    emulator.configure(line_error_rate=0.3)  # some lines fail for good: an error file as well
    ctx = await make_ctx(cleanup_settings(redis_url, emulator.url), http)
    await enqueue_jobs(ctx["ledger"], 30)
    bid = await run_batch(ctx)  # polled until ended: the input file is gone already
    record = await ctx["redis"].hgetall(keys.batch(bid))
    assert {b"input_file_id", b"output_file_id", b"error_file_id"} <= set(record)
    assert record[b"input_file_id"].decode() not in files_at(sdk)
    totals = await ingest_batch(ctx, bid)
    assert totals["succeeded"] + totals["failed"] == 30
    assert totals["failed"] > 0
    assert files_at(sdk) == []
    assert await redis.scard(keys.provider_files_pending("openai")) == 0


async def test_files_stay_when_cleanup_is_off(redis_url, redis, emulator, http, sdk) -> None:
    settings = cleanup_settings(redis_url, emulator.url, delete_input_files=False, delete_output_files=False)
    ctx = await make_ctx(settings, http)
    await enqueue_jobs(ctx["ledger"], 5)
    bid = await run_batch(ctx)
    await ingest_batch(ctx, bid)
    assert len(files_at(sdk)) == 2  # the input and the output file


async def test_a_failed_delete_never_blocks_ingestion_and_is_retried(
    redis_url, redis, emulator: EmulatorControl, http, sdk: openai.OpenAI
) -> None:
    ctx = await make_ctx(cleanup_settings(redis_url, emulator.url), http)
    ids = await enqueue_jobs(ctx["ledger"], 12)
    emulator.configure(fail_next={"DELETE /v1/files/*": [500] * 8})  # both deletes, every retry
    bid = await run_batch(ctx)
    totals = await ingest_batch(ctx, bid)
    assert totals["succeeded"] == len(ids)
    assert await redis.hget(keys.batch(bid), "state") == b"ingested"
    assert len(files_at(sdk)) == 2
    assert await redis.scard(keys.provider_files_pending("openai")) == 2
    counts = await reconcile_batches(ctx, 0)
    assert counts["files_deleted"] == 2
    assert files_at(sdk) == []
    assert await redis.scard(keys.provider_files_pending("openai")) == 0
