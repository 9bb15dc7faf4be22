"""The official ``anthropic`` SDK's ``messages.batches`` calls against batchshift, the tenant's key
in ``x-api-key``: create, retrieve until ended, results, cancel, list paging, errors."""

from __future__ import annotations

import anthropic
import httpx
import pytest
from anthropic.types.messages import MessageBatch, MessageBatchIndividualResponse

from tests import test_slo_e2e as slo
from tests.compat.support import (
    ANTHROPIC_MODEL,
    anthropic_sdk,
    compat_app,
    compat_settings,
    provider_batch_creates,
)

pytestmark = pytest.mark.timeout(600)

emulator_url = slo.emulator_url
emulator = slo.emulator
pagerduty = slo.pagerduty
harness = slo.harness


def _requests(custom_ids: list[str], model: str = ANTHROPIC_MODEL) -> list[dict]:
    return [
        {
            "custom_id": custom_id,
            "params": {
                "model": model,
                "max_tokens": 16,
                "messages": [{"role": "user", "content": custom_id}],
            },
        }
        for custom_id in custom_ids
    ]


async def _ended(sdk: anthropic.AsyncAnthropic, pipeline: slo.Pipeline, batch_id: str, within_s: float):
    async def ended() -> bool:
        return (await sdk.messages.batches.retrieve(batch_id)).processing_status == "ended"

    await pipeline.run_until(ended, within_s=within_s)
    return await sdk.messages.batches.retrieve(batch_id)


async def test_create_retrieve_until_ended_results_hold_every_custom_id_once(
    redis, redis_url, emulator, pagerduty, harness
):
    settings = compat_settings(redis_url, emulator, pagerduty)
    pipeline = harness(settings)
    custom_ids = [f"q-{i}" for i in range(120)]
    async with compat_app(settings, redis, pipeline) as app, anthropic_sdk(app) as sdk:
        batch = await sdk.messages.batches.create(requests=_requests(custom_ids))  # type: ignore[arg-type]
        assert batch.processing_status == "in_progress"
        assert batch.request_counts.processing == 120
        assert batch.results_url is None
        done = await _ended(sdk, pipeline, batch.id, within_s=30)
        assert done.request_counts.succeeded == 120
        assert done.request_counts.processing == 0
        assert done.ended_at is not None
        results = [r async for r in await sdk.messages.batches.results(batch.id)]
        assert sorted(r.custom_id for r in results) == sorted(custom_ids)
        assert {r.result.type for r in results} == {"succeeded"}
        assert {r.result.message.model for r in results if r.result.type == "succeeded"} == {ANTHROPIC_MODEL}
    [create] = provider_batch_creates(emulator)
    assert create["path"] == "/v1/messages/batches"


async def test_cancel_ends_with_answered_lines_kept_and_the_rest_canceled(
    redis, redis_url, emulator, pagerduty, harness
):
    settings = compat_settings(redis_url, emulator, pagerduty)
    pipeline = harness(settings)
    emulator.configure(stall=["claude-sonnet-4-5"])
    fast, stuck = [f"haiku-{i}" for i in range(5)], [f"sonnet-{i}" for i in range(3)]
    requests = _requests(fast) + _requests(stuck, model="claude-sonnet-4-5")
    async with compat_app(settings, redis, pipeline) as app, anthropic_sdk(app) as sdk:
        batch = await sdk.messages.batches.create(requests=requests)  # type: ignore[arg-type]

        async def fast_answered() -> bool:
            return (await sdk.messages.batches.retrieve(batch.id)).request_counts.succeeded == len(fast)

        await pipeline.run_until(fast_answered, within_s=20)
        cancelled = await sdk.messages.batches.cancel(batch.id)
        assert cancelled.processing_status == "ended"
        assert cancelled.cancel_initiated_at is not None
        assert (cancelled.request_counts.succeeded, cancelled.request_counts.canceled) == (5, 3)
        results = {r.custom_id: r.result.type async for r in await sdk.messages.batches.results(batch.id)}
        assert results == {**dict.fromkeys(fast, "succeeded"), **dict.fromkeys(stuck, "canceled")}


async def test_list_pages_and_errors_in_anthropic_shape(redis, redis_url, emulator, pagerduty, harness):
    settings = compat_settings(redis_url, emulator, pagerduty)
    pipeline = harness(settings)
    async with compat_app(settings, redis, pipeline) as app, anthropic_sdk(app) as sdk:
        created = [(await sdk.messages.batches.create(requests=_requests([f"x{i}"]))).id for i in range(3)]  # type: ignore[arg-type]
        page = await sdk.messages.batches.list(limit=2)
        assert [b.id for b in page.data] == created[::-1][:2]
        assert page.has_more is True
        assert [b.id async for b in sdk.messages.batches.list(limit=2)] == created[::-1]
        with pytest.raises(anthropic.BadRequestError) as refused:
            await sdk.messages.batches.create(requests=_requests(["a", "a"]))  # type: ignore[arg-type]
        body = refused.value.body
        assert isinstance(body, dict)
        assert body["type"] == "error"
        assert body["error"]["type"] == "invalid_request_error"
        with pytest.raises(anthropic.BadRequestError):
            await sdk.messages.batches.create(requests=_requests(["m"], model="not-a-model"))  # type: ignore[arg-type]
        with pytest.raises(anthropic.AnthropicError, match="results_url"):
            await sdk.messages.batches.results(created[0])  # not ended yet: no results_url
        async with anthropic_sdk(app, key="globex-key") as globex:
            with pytest.raises(anthropic.NotFoundError):
                await globex.messages.batches.retrieve(created[0])
            assert (await globex.messages.batches.list()).data == []
        async with anthropic_sdk(app, key="wrong") as stranger:
            with pytest.raises(anthropic.AuthenticationError):
                await stranger.messages.batches.list()
        async with anthropic_sdk(app, key="admin-key") as admin:
            with pytest.raises(anthropic.PermissionDeniedError):
                await admin.messages.batches.list()


async def test_x_api_key_is_taken_only_by_the_anthropic_routes(
    redis, redis_url, emulator, pagerduty, harness
):
    """The existing routes still need a Bearer key; an x-api-key header alone opens nothing else."""
    settings = compat_settings(redis_url, emulator, pagerduty)
    pipeline = harness(settings)
    async with compat_app(settings, redis, pipeline) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            for path in ("/v1/jobs", "/v1/batches", "/v1/costs"):
                answer = await client.get(path, headers={"x-api-key": "acme-key"})
                assert answer.status_code == 401, path
            answer = await client.get("/v1/messages/batches", headers={"x-api-key": "acme-key"})
            assert answer.status_code == 200
            missing = await client.get(
                "/v1/messages/batches/msgbatch_nope/results", headers={"x-api-key": "acme-key"}
            )
            assert missing.status_code == 404
            assert missing.json() == {
                "type": "error",
                "error": {
                    "type": "not_found_error",
                    "message": "No message batch found with id 'msgbatch_nope'.",
                },
            }


async def test_list_pages_toward_newer_with_before_id_as_the_sdk_follows_it(
    redis, redis_url, emulator, pagerduty, harness
):
    settings = compat_settings(redis_url, emulator, pagerduty)
    pipeline = harness(settings)
    async with compat_app(settings, redis, pipeline) as app, anthropic_sdk(app) as sdk:
        created = [(await sdk.messages.batches.create(requests=_requests([f"x{i}"]))).id for i in range(5)]  # type: ignore[arg-type]
        page = await sdk.messages.batches.list(before_id=created[0], limit=2)
        assert [b.id for b in page.data] == [created[2], created[1]]  # newest first, as every page
        assert (page.first_id, page.last_id, page.has_more) == (created[2], created[1], True)
        newer = [b.id async for b in sdk.messages.batches.list(before_id=created[0], limit=2)]
        assert newer == [created[2], created[1], created[4], created[3]]
        last = await sdk.messages.batches.list(before_id=created[3], limit=2)
        assert ([b.id for b in last.data], last.has_more) == ([created[4]], False)
        assert (await sdk.messages.batches.list(before_id=created[4])).data == []
        with pytest.raises(anthropic.BadRequestError, match="before_id"):
            await sdk.messages.batches.list(before_id=created[4], after_id=created[0])


async def test_cancel_twice_and_request_counts_as_the_batch_moves(
    redis, redis_url, emulator, pagerduty, harness
):
    """in_progress (every request processing) → canceling → ended; the counts always sum to the
    requests; a second cancel of the ended batch is refused in Anthropic's error shape."""
    settings = compat_settings(redis_url, emulator, pagerduty)
    pipeline = harness(settings)
    emulator.configure(stall=[ANTHROPIC_MODEL])
    async with compat_app(settings, redis, pipeline) as app, anthropic_sdk(app) as sdk:
        batch = await sdk.messages.batches.create(requests=_requests(["a", "b", "c"]))  # type: ignore[arg-type]
        assert batch.processing_status == "in_progress"
        assert batch.request_counts.to_dict() == {
            "processing": 3,
            "succeeded": 0,
            "errored": 0,
            "canceled": 0,
            "expired": 0,
        }
        assert (batch.results_url, batch.ended_at, batch.cancel_initiated_at) == (None, None, None)
        await pipeline.run_for(1)  # submitted to the stalled provider batch
        ended = await sdk.messages.batches.cancel(batch.id)
        assert ended.processing_status == "ended"
        assert ended.request_counts.canceled == 3
        assert ended.cancel_initiated_at is not None
        assert ended.ended_at is not None
        assert ended.results_url is not None
        assert ended.results_url.endswith(f"/v1/messages/batches/{batch.id}/results")
        with pytest.raises(anthropic.BadRequestError) as refused:
            await sdk.messages.batches.cancel(batch.id)
        assert isinstance(refused.value.body, dict)
        assert refused.value.body["type"] == "error"
        assert refused.value.body["error"]["type"] == "invalid_request_error"
        results = [r async for r in await sdk.messages.batches.results(batch.id)]
        assert sorted((r.custom_id, r.result.type) for r in results) == [
            ("a", "canceled"),
            ("b", "canceled"),
            ("c", "canceled"),
        ]
        # The raw objects pass the SDK's own types validated (not merely read leniently).
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api", headers={"x-api-key": "acme-key"}
        ) as raw:
            listed = (await raw.get("/v1/messages/batches")).json()
            lines = (await raw.get(f"/v1/messages/batches/{batch.id}/results")).content.splitlines()
    assert set(listed) == {"data", "has_more", "first_id", "last_id"}
    for obj in listed["data"]:
        MessageBatch.model_validate(obj)
    for line in lines:
        MessageBatchIndividualResponse.model_validate_json(line)


async def test_delete_an_ended_batch_and_refuse_one_still_processing(
    redis, redis_url, emulator, pagerduty, harness
):
    settings = compat_settings(redis_url, emulator, pagerduty)
    pipeline = harness(settings)
    emulator.configure(stall=[ANTHROPIC_MODEL])
    async with compat_app(settings, redis, pipeline) as app, anthropic_sdk(app) as sdk:
        running = await sdk.messages.batches.create(requests=_requests(["a"]))  # type: ignore[arg-type]
        ended = await sdk.messages.batches.create(requests=_requests(["b"]))  # type: ignore[arg-type]
        await sdk.messages.batches.cancel(ended.id)
        with pytest.raises(anthropic.BadRequestError, match="cancel it first"):
            await sdk.messages.batches.delete(running.id)
        deleted = await sdk.messages.batches.delete(ended.id)
        assert (deleted.id, deleted.type) == (ended.id, "message_batch_deleted")
        for call in (sdk.messages.batches.retrieve, sdk.messages.batches.delete, sdk.messages.batches.cancel):
            with pytest.raises(anthropic.NotFoundError):
                await call(ended.id)
        assert [b.id for b in (await sdk.messages.batches.list()).data] == [running.id]
        async with anthropic_sdk(app, key="globex-key") as globex:
            with pytest.raises(anthropic.NotFoundError):
                await globex.messages.batches.delete(running.id)
        assert (await sdk.messages.batches.retrieve(running.id)).processing_status == "in_progress"
