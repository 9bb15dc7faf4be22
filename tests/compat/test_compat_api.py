"""The compatible endpoints' own rules, through the official SDKs against our API in process (no
pipeline: jobs stay queued): upload limits, OpenAI's line errors, the window's expiry, admission
refusals as failed lines, and lines routed to whichever provider serves their model."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

import httpx
import openai
import pytest
from fastapi import FastAPI

from api.app import create_app
from config.settings import CompatSettings, ProviderSettings, Settings, TenantSettings
from scheduler.compat.intake import BatchIntake, draft
from scheduler.compat.lines import Line, LineErrors, jobs_for
from scheduler.errors import IllegalTransition
from scheduler.ledger import keys
from scheduler.ledger.clock import ManualClock
from tests.api.harness import ACME
from tests.compat.support import CHAT, jsonl, openai_sdk
from tests.conftest import make_settings

NOW_MS = 1_790_000_000_000


@contextlib.asynccontextmanager
async def api(settings: Settings, redis) -> AsyncIterator[tuple[FastAPI, ManualClock]]:
    app = create_app(settings, redis=redis)
    clock = ManualClock(NOW_MS)
    async with app.router.lifespan_context(app):
        app.state.clock = clock
        yield app, clock


async def _create(sdk: openai.AsyncOpenAI, content: bytes, window: str = "24h"):
    uploaded = await sdk.files.create(file=("in.jsonl", content), purpose="batch")
    return await sdk.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window=window)  # type: ignore[arg-type]


async def test_an_upload_over_the_limit_is_refused_with_openais_400_and_nothing_kept(redis, redis_url):
    settings = make_settings(redis_url, compat=CompatSettings(max_file_bytes=1000))
    async with api(settings, redis) as (app, _), openai_sdk(app) as sdk:
        with pytest.raises(openai.BadRequestError, match="at most 1000 bytes") as refused:
            await sdk.files.create(file=("in.jsonl", jsonl([f"r{i}" for i in range(20)])), purpose="batch")
        assert isinstance(refused.value.body, dict)
        assert refused.value.body["param"] == "file"
        with pytest.raises(openai.BadRequestError, match="purpose"):
            await sdk.files.create(file=("in.jsonl", b"{}"), purpose="fine-tune")
        fits = await sdk.files.create(file=("in.jsonl", jsonl(["one"])), purpose="batch")
    assert [k async for k in redis.scan_iter(match="bs:cfile:*")] != []
    assert {k.decode() async for k in redis.scan_iter(match="bs:cfile:*")} == {
        keys.client_file(fits.id),
        keys.client_file_content(fits.id),
    }


async def test_line_errors_as_openai_reports_them(redis, redis_url):
    settings = make_settings(redis_url)
    good = json.loads(jsonl(["ok"]).decode())
    lines = [
        good,
        {**good, "custom_id": None},
        good,  # the same custom_id again
        {**good, "custom_id": "m", "method": "GET"},
        {**good, "custom_id": "u", "url": "/v1/embeddings"},
        {**good, "custom_id": "b", "body": "text"},
        {**good, "custom_id": "s", "body": {**good["body"], "stream": True}},
    ]
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    async with api(settings, redis) as (app, _), openai_sdk(app) as sdk:
        batch = await _create(sdk, content)
        empty = await _create(sdk, b"\n\n")
    assert batch.status == "failed"
    assert batch.request_counts is not None
    assert batch.request_counts.total == 0
    assert batch.errors is not None
    assert batch.errors.data is not None
    assert [(e.code, e.line) for e in batch.errors.data] == [
        ("missing_required_parameter", 2),
        ("duplicate_custom_id", 3),
        ("invalid_method", 4),
        ("url_mismatch", 5),
        ("invalid_request", 6),
    ]
    assert empty.errors is not None
    assert empty.errors.data is not None
    assert [e.code for e in empty.errors.data] == ["empty_file"]
    assert await redis.zcard(keys.tenant_jobs("acme")) == 0


async def test_a_line_intake_refuses_fails_the_batch_naming_it(redis, redis_url):
    settings = make_settings(redis_url)
    good = json.loads(jsonl(["ok"]).decode())
    streaming = {**good, "custom_id": "s", "body": {**good["body"], "stream": True}}
    content = (json.dumps(good) + "\n" + json.dumps(streaming) + "\n").encode()
    async with api(settings, redis) as (app, _), openai_sdk(app) as sdk:
        batch = await _create(sdk, content)
    assert batch.errors is not None
    assert batch.errors.data is not None
    [error] = batch.errors.data
    assert (error.line, error.param) == (2, "body.stream")


async def test_the_window_passing_with_lines_unanswered_expires_the_batch(redis, redis_url):
    settings = make_settings(redis_url)
    async with api(settings, redis) as (app, clock), openai_sdk(app) as sdk:
        batch = await _create(sdk, jsonl(["a", "b"]), window="1h")
        clock.advance(3599)
        assert (await sdk.batches.retrieve(batch.id)).status == "in_progress"
        clock.advance(2)
        expired = await sdk.batches.retrieve(batch.id)
        assert expired.status == "expired"
        assert expired.expired_at == batch.created_at + 3600
        assert expired.request_counts is not None
        assert (expired.request_counts.completed, expired.request_counts.failed) == (0, 2)
        assert expired.output_file_id is None
        assert expired.error_file_id is not None
        errors = [
            json.loads(line) for line in (await sdk.files.content(expired.error_file_id)).text.splitlines()
        ]
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [
        ("a", "batch_expired"),
        ("b", "batch_expired"),
    ]


async def test_lines_admission_refuses_are_failed_lines_and_the_rest_runs(redis, redis_url):
    """A spent `reject` envelope refuses each line at admission: the batch still runs, and ends at
    once, every line in the error file with the refusal."""
    tenants = {
        "acme": TenantSettings(api_key="acme-key", monthly_budget_usd=0.0, budget_policy="reject"),
    }
    settings = make_settings(redis_url, tenants=tenants)
    async with api(settings, redis) as (app, _), openai_sdk(app) as sdk:
        batch = await _create(sdk, jsonl(["a", "b", "c"]))
        assert batch.status == "completed"
        assert batch.request_counts is not None
        assert (batch.request_counts.total, batch.request_counts.failed) == (3, 3)
        assert batch.error_file_id is not None
        errors = [
            json.loads(line) for line in (await sdk.files.content(batch.error_file_id)).text.splitlines()
        ]
    assert [e["custom_id"] for e in errors] == ["a", "b", "c"]
    assert {e["error"]["code"] for e in errors} == {"budget_exceeded"}
    assert await redis.zcard(keys.tenant_jobs("acme")) == 0


async def test_each_line_goes_to_the_provider_serving_its_model(redis, redis_url):
    providers = {
        "openai": ProviderSettings(kind="openai", base_url="http://127.0.0.1:9/v1", api_key="sk"),
        "azure": ProviderSettings(
            kind="azure_openai",
            base_url="http://127.0.0.1:9/openai",
            api_key="az",
            api_version="2024-10-21",
            deployments={"gpt-4o-mini-batch": "gpt-4o-mini"},
        ),
    }
    settings = make_settings(redis_url, providers=providers)
    content = jsonl(["o"]) + jsonl(["z"], model="gpt-4o-mini-batch")
    async with api(settings, redis) as (app, _), openai_sdk(app) as sdk:
        batch = await _create(sdk, content)
        assert batch.status == "in_progress"
        unknown = await _create(sdk, jsonl(["x"], model="no-such-model"))
    assert unknown.errors is not None
    assert unknown.errors.data is not None
    assert [(e.code, e.line) for e in unknown.errors.data] == [("model_not_found", 1)]
    job_ids = [j.decode() for j in await redis.zrange(keys.tenant_jobs("acme"), 0, -1)]
    lanes = sorted([(await redis.hget(keys.job(j), "lane")).decode() for j in job_ids])
    assert lanes == [
        "azure:gpt-4o-mini-batch:/v1/chat/completions",
        "openai:gpt-4o-mini:/v1/chat/completions",
    ]


async def test_the_tenants_batch_index_forgets_batches_past_their_ttl(redis, redis_url):
    settings = make_settings(redis_url)
    async with api(settings, redis) as (app, clock), openai_sdk(app) as sdk:
        old = await _create(sdk, jsonl(["a"]))
        clock.advance(keys.CLIENT_BATCH_TTL_S - 1)
        kept = await _create(sdk, jsonl(["b"]))
        assert [b.id async for b in sdk.batches.list()] == [kept.id, old.id]
        clock.advance(2)
        newest = await _create(sdk, jsonl(["c"]))
    index = [i.decode() for i in await redis.zrange(keys.tenant_client_batches("acme"), 0, -1)]
    assert index == [kept.id, newest.id]


async def test_an_upload_without_a_declared_length_is_refused_before_it_is_read(redis, redis_url):
    settings = make_settings(redis_url)

    async def body() -> AsyncIterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--b--\r\n'

    async with api(settings, redis) as (app, _):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=ACME) as client:
            answer = await client.post(
                "/v1/files", content=body(), headers={"content-type": "multipart/form-data; boundary=b"}
            )
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "content-length"
    assert [k async for k in redis.scan_iter(match="bs:cfile*")] == []


async def test_a_create_that_died_midway_can_be_cancelled_once_stale_cancelling_what_it_enqueued(
    redis, redis_url
):
    """The create's process dies after enqueueing 2 of 4 lines (listed, one never made a job):
    the batch stays validating; once stale, cancelling it cancels the 2 jobs and ends it."""
    settings = make_settings(redis_url)
    async with api(settings, redis) as (app, clock), openai_sdk(app) as sdk:
        intake: BatchIntake = app.state.batch_intake
        uploaded = await sdk.files.create(file=("in.jsonl", jsonl(["a", "b", "c", "d"])), purpose="batch")
        batch = draft(
            "openai",
            "acme",
            endpoint=CHAT,
            input_file_id=uploaded.id,
            window="24h",
            window_s=86400,
            metadata=None,
            total=4,
            now_ms=clock.ms,
        )
        lines = [Line(n, cid, json.loads(jsonl([cid]))["body"]) for n, cid in enumerate("abc", start=1)]
        jobs = jobs_for(lines, batch, settings, LineErrors(), now_ms=clock.ms)
        await intake._record(batch)
        await intake.batches.add_lines(batch.id, [job.id for job in jobs])  # listed, then the crash:
        await intake.ledger.enqueue_many(jobs[:2])  # only two became jobs
        assert (await sdk.batches.retrieve(batch.id)).status == "validating"
        with pytest.raises(openai.ConflictError, match="validating"):
            await sdk.batches.cancel(batch.id)  # not stale yet: the create may still be running
        clock.advance(settings.compat.stale_create_s + 1)
        assert [b.status for b in (await sdk.batches.list()).data] == ["validating"]
        cancelled = await sdk.batches.cancel(batch.id)
        assert cancelled.status == "cancelled"
        assert cancelled.request_counts is not None
        assert (cancelled.request_counts.total, cancelled.request_counts.failed) == (4, 4)
        assert cancelled.error_file_id is not None
        errors = [
            json.loads(line) for line in (await sdk.files.content(cancelled.error_file_id)).text.splitlines()
        ]
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [
        ("a", "batch_cancelled"),
        ("b", "batch_cancelled"),
        ("", "batch_cancelled"),  # listed, never made a job: nothing is known of it but its place
    ]
    assert [r.state for r in await intake.ledger.get_many([j.id for j in jobs[:2]])] == ["cancelled"] * 2  # type: ignore[union-attr]


async def test_a_slow_create_swept_as_dead_enqueues_no_more_lines(redis, redis_url):
    """A create still running past ``compat.stale_create_s`` is cancelled by the reconcile pass
    between two chunks of lines: the first chunk's jobs are cancelled, the second is never made,
    the create answers 409, and the batch ends cancelled with its counts whole."""
    settings = make_settings(redis_url)
    async with api(settings, redis) as (app, clock):
        intake: BatchIntake = app.state.batch_intake
        batch = draft(
            "openai",
            "acme",
            endpoint=CHAT,
            input_file_id="file-gone",
            window="24h",
            window_s=86400,
            metadata=None,
            total=4,
            now_ms=clock.ms,
        )
        lines = [Line(n, cid, json.loads(jsonl([cid]))["body"]) for n, cid in enumerate("abcd", start=1)]
        jobs = jobs_for(lines, batch, settings, LineErrors(), now_ms=clock.ms)
        await intake._record(batch)

        async def slow_chunks() -> AsyncIterator[list]:
            yield jobs[:2]
            clock.advance(settings.compat.stale_create_s + 1)
            assert await intake.cancel_stale_creates(clock.ms) == 1  # the reconcile pass, meanwhile
            yield jobs[2:]

        with pytest.raises(IllegalTransition, match="cancelled while it was created"):
            await intake._enqueue(batch, slow_chunks(), clock.ms)
        swept = await intake.batches.find(batch.id)
        assert swept is not None
        assert swept.status(clock.ms) == "cancelled"
        assert (swept.total, swept.ended, swept.cancelled) == (4, 4, 4)
        records = await intake.ledger.get_many([j.id for j in jobs])
    assert [r.state if r else None for r in records] == ["cancelled", "cancelled", None, None]


async def test_a_line_the_job_store_refuses_fails_alone_and_the_stored_lines_run(redis, redis_url):
    """Redis refusing one line's job (its lane queue is not a sorted set) while it stored the others
    of the chunk: that line is a failed line of the batch, the others are queued once each."""
    settings = make_settings(redis_url)
    await redis.set(keys.lane_queue("openai:gpt-4o:/v1/chat/completions"), "not a sorted set")
    content = jsonl(["a"]) + jsonl(["b"], model="gpt-4o") + jsonl(["c"])
    async with api(settings, redis) as (app, _), openai_sdk(app) as sdk:
        batch = await _create(sdk, content)
        assert batch.status == "in_progress"
        assert batch.request_counts is not None
        assert (batch.request_counts.total, batch.request_counts.failed) == (3, 1)
    job_ids = [j.decode() for j in await redis.zrange(keys.tenant_jobs("acme"), 0, -1)]
    assert len(job_ids) == 2
    custom_ids = sorted([(await redis.hget(keys.job(j), "custom_id")).decode() for j in job_ids])
    assert custom_ids == ["a", "c"]
