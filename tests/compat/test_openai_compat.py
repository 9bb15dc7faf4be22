"""The official ``openai`` SDK against batchshift (``base_url`` = batchshift): files, batches, output
and error files, cancel and listing, with every line a job of the pipeline on a virtual clock."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from scheduler.ledger import keys
from scheduler.ledger.ledger import day_of
from tests import test_slo_e2e as slo
from tests.api.harness import ACME, bs_snapshot
from tests.compat.support import (
    CHAT,
    compat_app,
    compat_settings,
    jsonl,
    openai_sdk,
    provider_batch_creates,
)

pytestmark = pytest.mark.timeout(600)

# The SLO end-to-end emulator, pager and pipeline harness, shared by name.
emulator_url = slo.emulator_url
emulator = slo.emulator
pagerduty = slo.pagerduty
harness = slo.harness


async def _retrieve_until(
    sdk: openai.AsyncOpenAI, pipeline: slo.Pipeline, batch_id: str, status: str, within_s: float
):
    async def reached() -> bool:
        return (await sdk.batches.retrieve(batch_id)).status == status

    await pipeline.run_until(reached, within_s=within_s)
    return await sdk.batches.retrieve(batch_id)


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


async def test_500_lines_upload_create_retrieve_until_completed_every_custom_id_answered_once(
    redis, redis_url, emulator, pagerduty, harness
):
    settings = compat_settings(redis_url, emulator, pagerduty)
    pipeline = harness(settings)
    custom_ids = [f"req-{i}" for i in range(500)]
    content = jsonl(custom_ids)
    async with compat_app(settings, redis, pipeline) as app, openai_sdk(app) as sdk:
        uploaded = await sdk.files.create(file=("input.jsonl", content), purpose="batch")
        assert (uploaded.purpose, uploaded.bytes) == ("batch", len(content))
        assert (await sdk.files.content(uploaded.id)).content == content
        batch = await sdk.batches.create(
            input_file_id=uploaded.id,
            endpoint=CHAT,
            completion_window="24h",
            metadata={"feature": "nightly-summaries"},
        )
        assert batch.status == "in_progress"
        assert batch.request_counts is not None
        assert batch.request_counts.total == 500
        done = await _retrieve_until(sdk, pipeline, batch.id, "completed", within_s=30)
        assert done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (500, 0)
        assert done.error_file_id is None
        assert done.output_file_id is not None
        assert done.completed_at is not None
        assert done.completed_at <= done.expires_at
        output = await sdk.files.content(done.output_file_id)
        lines = _lines(output.text)
        assert sorted(line["custom_id"] for line in lines) == sorted(custom_ids)
        assert {line["response"]["status_code"] for line in lines} == {200}
        assert all(line["error"] is None for line in lines)
        # The body is the provider's answer byte for byte: the stored result sits whole in its line.
        first = output.content.splitlines()[0]
        job_id = _lines(first.decode())[0]["response"]["request_id"]
        stored = await redis.get(keys.result(job_id))
        assert stored
        assert b'"body":' + stored + b"}" in first
        meta = await sdk.files.retrieve(done.output_file_id)
        assert (meta.bytes, meta.purpose) == (len(output.content), "batch_output")
        # Costed like any job: the feature from the metadata, each line at the batch price.
        day = day_of(pipeline.clock.ms)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api", headers=ACME
        ) as client:
            report = (await client.get(f"/v1/costs?group_by=feature&from={day}&to={day}")).json()
        [row] = report["groups"]
        assert (row["key"], row["jobs"], row["sync_share"]) == ("nightly-summaries", 500, 0)
        assert 0 < row["actual_usd"] < row["sync_equivalent_usd"]
        # The batch itself shows its usage and cost (the cost a batchshift extension), the same figures.
        assert done.usage is not None
        assert done.usage.input_tokens == row["input_tokens"]
        assert done.usage.output_tokens == row["output_tokens"]
        cost = done.to_dict()["cost"]
        assert cost["actual_usd"] == pytest.approx(row["actual_usd"], abs=1e-6)
        assert cost["sync_equivalent_usd"] == pytest.approx(row["sync_equivalent_usd"], abs=1e-6)
    # Each line was an ordinary job of the tenant, tagged by the metadata, pooled into one provider batch.
    job = await pipeline.ledger.get(job_id)
    assert job is not None
    assert job.tenant == "acme"
    assert job.tags["feature"] == "nightly-summaries"
    assert len(provider_batch_creates(emulator)) == 1


async def test_a_bad_line_fails_the_batch_with_openai_line_errors_and_makes_no_job(
    redis, redis_url, emulator, pagerduty, harness
):
    settings = compat_settings(redis_url, emulator, pagerduty)
    pipeline = harness(settings)
    good = jsonl(["a", "b"]).decode().splitlines()
    content = "\n".join([good[0], '{"custom_id": "c", "method": "POST", "url": ', good[1]]).encode()
    async with compat_app(settings, redis, pipeline) as app, openai_sdk(app) as sdk:
        uploaded = await sdk.files.create(file=("input.jsonl", content), purpose="batch")
        batch = await sdk.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
        assert batch.status == "failed"
        assert batch.errors is not None
        assert batch.errors.data is not None
        [error] = batch.errors.data
        assert (error.code, error.line) == ("invalid_json_line", 2)
        assert batch.failed_at is not None
        assert (await sdk.batches.retrieve(batch.id)).status == "failed"
    assert await redis.zcard(keys.tenant_jobs("acme")) == 0


async def test_windows_1h_accepted_junk_refused_in_openai_error_shape(
    redis, redis_url, emulator, pagerduty, harness
):
    settings = compat_settings(redis_url, emulator, pagerduty)
    pipeline = harness(settings)
    async with compat_app(settings, redis, pipeline) as app, openai_sdk(app) as sdk:
        uploaded = await sdk.files.create(file=("input.jsonl", jsonl(["a"])), purpose="batch")
        short = await sdk.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="1h")  # type: ignore[arg-type]
        assert short.completion_window == "1h"
        assert short.expires_at - short.created_at == 3600
        before = await bs_snapshot(redis)
        for window in ("24 hours", "0h", "1d"):
            with pytest.raises(openai.BadRequestError) as refused:
                await sdk.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window=window)  # type: ignore[arg-type]
            assert refused.value.status_code == 400
            body = refused.value.body
            assert isinstance(body, dict)
            assert body["param"] == "completion_window"
            assert body["type"] == "invalid_request_error"
            assert set(body) == {"message", "type", "param", "code"}
        with pytest.raises(openai.BadRequestError):
            await sdk.batches.create(input_file_id="file-nope", endpoint=CHAT, completion_window="24h")
        with pytest.raises(openai.BadRequestError, match="metadata"):
            await sdk.batches.create(
                input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h", metadata={"k": "v" * 513}
            )
        assert await bs_snapshot(redis) == before  # refused: nothing stored
        with pytest.raises(openai.AuthenticationError):
            async with openai_sdk(app, key="wrong") as stranger:
                await stranger.batches.list()


async def test_cancel_ends_cancelled_with_the_answered_lines_in_the_output_file(
    redis, redis_url, emulator, pagerduty, harness
):
    """Lines of one client batch go to two lanes by model; one lane stalls. Cancel: the answered
    lines stay in the output file, the others are in the error file as cancelled."""
    settings = compat_settings(redis_url, emulator, pagerduty)
    pipeline = harness(settings)
    emulator.configure(stall=["gpt-4o"])
    fast, stuck = [f"mini-{i}" for i in range(6)], [f"big-{i}" for i in range(4)]
    content = jsonl(fast) + jsonl(stuck, model="gpt-4o")
    async with compat_app(settings, redis, pipeline) as app, openai_sdk(app) as sdk:
        uploaded = await sdk.files.create(file=("input.jsonl", content), purpose="batch")
        batch = await sdk.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")

        async def fast_answered() -> bool:
            counts = (await sdk.batches.retrieve(batch.id)).request_counts
            return counts is not None and counts.completed == len(fast)

        await pipeline.run_until(fast_answered, within_s=20)
        assert (await sdk.batches.retrieve(batch.id)).status == "in_progress"
        cancelled = await sdk.batches.cancel(batch.id)
        assert cancelled.status == "cancelled"
        assert cancelled.cancelling_at is not None
        assert cancelled.cancelled_at is not None
        assert cancelled.request_counts is not None
        assert (cancelled.request_counts.completed, cancelled.request_counts.failed) == (6, 4)
        assert cancelled.output_file_id is not None
        assert cancelled.error_file_id is not None
        output = _lines((await sdk.files.content(cancelled.output_file_id)).text)
        assert sorted(line["custom_id"] for line in output) == sorted(fast)
        errors = _lines((await sdk.files.content(cancelled.error_file_id)).text)
        assert sorted(line["custom_id"] for line in errors) == sorted(stuck)
        assert {line["error"]["code"] for line in errors} == {"batch_cancelled"}
        with pytest.raises(openai.ConflictError, match="status 'cancelled'"):
            await sdk.batches.cancel(batch.id)  # already over: OpenAI's 409
        await pipeline.run_for(1)  # the stuck provider batch's jobs stay cancelled
        assert (await sdk.batches.retrieve(batch.id)).status == "cancelled"


async def test_list_pages_newest_first_and_each_tenant_sees_its_own(
    redis, redis_url, emulator, pagerduty, harness
):
    settings = compat_settings(redis_url, emulator, pagerduty)
    pipeline = harness(settings)
    async with compat_app(settings, redis, pipeline) as app, openai_sdk(app) as sdk:
        uploaded = await sdk.files.create(file=("input.jsonl", jsonl(["a"])), purpose="batch")
        created = [
            (await sdk.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")).id
            for _ in range(5)
        ]
        first = await sdk.batches.list(limit=2)
        assert [b.id for b in first.data] == created[::-1][:2]
        assert first.has_more is True
        assert [b.id async for b in sdk.batches.list(limit=2)] == created[::-1]
        async with openai_sdk(app, key="globex-key") as globex:
            assert (await globex.batches.list()).data == []
            assert (await globex.files.list()).data == []
            with pytest.raises(openai.NotFoundError):
                await globex.batches.retrieve(created[0])
            with pytest.raises(openai.NotFoundError):
                await globex.files.retrieve(uploaded.id)
        second = await sdk.files.create(file=("two.jsonl", jsonl(["b"])), purpose="batch")
        assert [f.id async for f in sdk.files.list(limit=1)] == [second.id, uploaded.id]
        assert [f.id for f in (await sdk.files.list(order="asc")).data] == [uploaded.id, second.id]
        deleted = await sdk.files.delete(uploaded.id)
        assert [f.id for f in (await sdk.files.list()).data] == [second.id]
        assert deleted.deleted is True
        with pytest.raises(openai.NotFoundError):
            await sdk.files.retrieve(uploaded.id)


async def test_an_embeddings_batch_runs_like_a_chat_one(redis, redis_url, emulator, pagerduty, harness):
    settings = compat_settings(redis_url, emulator, pagerduty)
    pipeline = harness(settings)
    lines = [
        {
            "custom_id": f"e{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "text-embedding-3-small", "input": f"text {i}"},
        }
        for i in range(3)
    ]
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    async with compat_app(settings, redis, pipeline) as app, openai_sdk(app) as sdk:
        uploaded = await sdk.files.create(file=("in.jsonl", content), purpose="batch")
        batch = await sdk.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
        )
        done = await _retrieve_until(sdk, pipeline, batch.id, "completed", within_s=20)
        assert done.output_file_id is not None
        output = _lines((await sdk.files.content(done.output_file_id)).text)
    assert sorted(line["custom_id"] for line in output) == ["e0", "e1", "e2"]
    assert {line["response"]["body"]["object"] for line in output} == {"list"}
