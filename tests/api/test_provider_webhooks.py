"""POST /v1/provider-webhooks/{provider}: Standard Webhooks verification, the guarded end of a
batch, ingestion enqueued by the event itself, and the emulator sending the events end to end."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis
from standardwebhooks import Webhook
from structlog.testing import capture_logs

from api.app import create_app
from config.settings import SchedulerSettings, Settings, SloSettings
from emulator.server import EmulatorControl
from scheduler.ledger import keys, tasks
from scheduler.ledger.ids import batch_id as new_batch_id
from scheduler.planning.batches import Batches
from scheduler.planning.lanes import effective
from tests.api.harness import asgi, serve
from tests.conftest import make_settings
from tests.workers.batch_harness import ENDPOINT, MODEL, enqueue_jobs, make_ctx
from tests.workers.conftest import FAST_HTTP, openai_settings
from tests.workers.receiver import running_receiver
from workers.context import WorkerContext
from workers.http import build_client
from workers.tasks.batches import submit_batch
from workers.tasks.outcomes import SubmitOutcome
from workers.worker import run_burst

SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"  # noqa: S105 -- a test secret
PATH = "/v1/provider-webhooks/openai"


def hook_settings(redis_url: str, url: str = "http://127.0.0.1:9", **provider: Any) -> Settings:
    return make_settings(
        redis_url,
        providers={"openai": openai_settings(url, webhook_secret=SECRET, allow_any_model=True, **provider)},
        slo=SloSettings(prior_turnaround_s=1.0),
        scheduler=SchedulerSettings(max_attempts=3),
    )


def signed(
    event: dict[str, Any], msg_id: str, *, secret: str = SECRET, at: datetime | None = None
) -> tuple[bytes, dict[str, str]]:
    """The event's body and headers, signed by the reference Standard Webhooks library."""
    body = orjson.dumps(event)
    at = at or datetime.now(tz=UTC)
    signature = Webhook(secret).sign(msg_id, at, body.decode())
    headers = {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
    }
    return body, headers


def batch_event(provider_batch_id: str, kind: str = "batch.completed") -> dict[str, Any]:
    return {
        "id": "evt_1",
        "object": "event",
        "created_at": int(time.time()),
        "type": kind,
        "data": {"id": provider_batch_id},
    }


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with build_client(FAST_HTTP) as client:
        yield client


async def submitted_batch(ctx: WorkerContext, n: int = 3) -> tuple[str, str]:
    """``n`` jobs reserved into one batch and submitted to the emulator: (our id, the provider's)."""
    redis = ctx["redis"]
    await enqueue_jobs(ctx["ledger"], n)
    await redis.set(keys.LEADER_FENCE, "1")
    bid = new_batch_id()
    lane = effective(ctx["settings"], "openai", MODEL, ENDPOINT)
    assert await Batches(redis).reserve(lane, bid, token=1, now_ms=int(time.time() * 1000), chunk=5000) == n
    assert await submit_batch(ctx, bid) is SubmitOutcome.SUBMITTED
    record = await Batches(redis).get(bid)
    assert record is not None
    assert record.provider_batch_id is not None
    return bid, record.provider_batch_id


# -- verification ---------------------------------------------------------------------------------


async def test_a_bad_signature_is_a_400_json_error(redis: Redis, redis_url: str) -> None:
    body, headers = signed(batch_event("batch_x"), "msg_1", secret="whsec_" + "A" * 32)
    async with asgi(create_app(hook_settings(redis_url), redis=redis)) as client:
        response = await client.post(PATH, content=body, headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_signature"
    assert await redis.keys("bs:provider_events:*") == []


async def test_a_body_changed_after_signing_is_refused(redis: Redis, redis_url: str) -> None:
    body, headers = signed(batch_event("batch_x"), "msg_1")
    async with asgi(create_app(hook_settings(redis_url), redis=redis)) as client:
        response = await client.post(PATH, content=body.replace(b"batch_x", b"batch_y"), headers=headers)
    assert response.status_code == 400


async def test_a_stale_timestamp_is_refused(redis: Redis, redis_url: str) -> None:
    """A correctly signed event from ten minutes ago is a replay (tolerance: five minutes)."""
    old = datetime.fromtimestamp(time.time() - 600, tz=UTC)
    body, headers = signed(batch_event("batch_x"), "msg_1", at=old)
    async with asgi(create_app(hook_settings(redis_url), redis=redis)) as client:
        response = await client.post(PATH, content=body, headers=headers)
    assert response.status_code == 400
    assert "timestamp" in response.json()["error"]["message"]


async def test_missing_headers_are_refused(redis: Redis, redis_url: str) -> None:
    body, headers = signed(batch_event("batch_x"), "msg_1")
    del headers["webhook-signature"]
    async with asgi(create_app(hook_settings(redis_url), redis=redis)) as client:
        response = await client.post(PATH, content=body, headers=headers)
    assert response.status_code == 400


async def test_a_provider_without_a_secret_has_no_route(redis: Redis, redis_url: str) -> None:
    body, headers = signed(batch_event("batch_x"), "msg_1")
    async with asgi(create_app(make_settings(redis_url), redis=redis)) as client:
        plain = await client.post(PATH, content=body, headers=headers)
        unknown = await client.post("/v1/provider-webhooks/nobody", content=body, headers=headers)
    assert plain.status_code == 404
    assert unknown.status_code == 404


async def test_the_secret_is_never_logged_nor_returned(redis: Redis, redis_url: str) -> None:
    settings = hook_settings(redis_url)
    assert SECRET not in repr(settings)
    assert SECRET not in settings.model_dump_json()
    good = signed(batch_event("batch_x"), "msg_1")
    bad = signed(batch_event("batch_x"), "msg_2", secret="whsec_" + "B" * 32)
    with capture_logs() as logs:
        async with asgi(create_app(settings, redis=redis)) as client:
            answers = [await client.post(PATH, content=b, headers=h) for b, h in (good, bad)]
    text = repr(logs) + "".join(a.text for a in answers)
    assert SECRET not in text
    assert SECRET.removeprefix("whsec_") not in text
    assert [a.status_code for a in answers] == [200, 400]


def test_a_secret_must_be_whsec() -> None:
    with pytest.raises(ValueError, match="whsec_") as info:
        openai_settings("http://127.0.0.1:9", webhook_secret="C2FVsBQIhrscChlQIMV")
    assert "C2FVsBQIhrscChlQIMV" not in str(info.value)


# -- the guarded end and the hand-over ------------------------------------------------------------


async def test_an_event_ends_the_batch_and_enqueues_its_ingestion(
    redis: Redis, redis_url: str, emulator: EmulatorControl, http: httpx.AsyncClient
) -> None:
    settings = hook_settings(redis_url, emulator.url)
    ctx = await make_ctx(settings, http)
    bid, pbid = await submitted_batch(ctx)
    body, headers = signed(batch_event(pbid), "msg_1")
    async with asgi(create_app(settings, redis=redis)) as client:
        first = await client.post(PATH, content=body, headers=headers)
        again = await client.post(PATH, content=body, headers=headers)  # the provider retries the same id
        _, other = signed(batch_event(pbid), "msg_2")  # a second event for the same end
        later = await client.post(PATH, content=orjson.dumps(batch_event(pbid)), headers=other)
    assert first.json() == {"status": "ended", "batch_id": bid}
    assert again.json() == {"status": "duplicate"}
    assert later.json() == {"status": "unchanged", "batch_id": bid}
    record = await Batches(redis).get(bid)
    assert record is not None
    assert record.state == "ended"
    assert record.raw["ended_by"] == "event"
    assert await redis.zscore(keys.BATCHES_POLL, bid) is None  # handed over: no poll left
    assert await redis.exists(f"arq:job:{tasks.ingest_job_id(bid)}") == 1
    assert await redis.llen(keys.lane_turnarounds(record.lane)) == 1
    await ctx["redis"].aclose()


async def test_a_failed_batch_is_polled_at_once_for_its_reason(
    redis: Redis, redis_url: str, emulator: EmulatorControl, http: httpx.AsyncClient
) -> None:
    """Only the provider's batch object says why it failed (and whether to retry): poll it now."""
    settings = hook_settings(redis_url, emulator.url)
    ctx = await make_ctx(settings, http)
    bid, pbid = await submitted_batch(ctx)
    body, headers = signed(batch_event(pbid, "batch.failed"), "msg_1")
    async with asgi(create_app(settings, redis=redis)) as client:
        answer = await client.post(PATH, content=body, headers=headers)
    assert answer.json() == {"status": "poll", "batch_id": bid}
    record = await Batches(redis).get(bid)
    assert record is not None
    assert record.state == "submitted"
    due = await redis.zscore(keys.BATCHES_POLL, bid)
    assert due is not None
    assert await redis.exists(f"arq:job:{tasks.poll_job_id(bid, int(due))}") == 1
    await ctx["redis"].aclose()


async def test_an_event_for_a_batch_we_do_not_know_is_acknowledged(redis: Redis, redis_url: str) -> None:
    body, headers = signed(batch_event("batch_unknown"), "msg_1")
    async with asgi(create_app(hook_settings(redis_url), redis=redis)) as client:
        answer = await client.post(PATH, content=body, headers=headers)
    assert answer.status_code == 200
    assert answer.json() == {"status": "unknown_batch", "batch_id": None}


async def test_with_webhooks_the_first_poll_is_the_safety_net(
    redis: Redis, redis_url: str, emulator: EmulatorControl, http: httpx.AsyncClient
) -> None:
    """Submission schedules the first poll ``webhook_poll_s`` out, not ``poll_initial_s``."""
    settings = hook_settings(redis_url, emulator.url, webhook_poll_s=600)
    ctx = await make_ctx(settings, http)
    bid, _ = await submitted_batch(ctx)
    record = await Batches(redis).get(bid)
    assert record is not None
    assert record.submitted_ms is not None
    due = await redis.zscore(keys.BATCHES_POLL, bid)
    assert due == record.submitted_ms + 600_000
    await ctx["redis"].aclose()


# -- end to end: the emulator sends the event ------------------------------------------------------


async def wait_for(check: Any, what: str, limit_s: float = 20.0) -> None:
    """Wait until ``check()`` is true; the limit only keeps a broken run from hanging."""
    deadline = time.monotonic() + limit_s
    while not await check():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.02)


async def test_the_emulator_event_hands_the_batch_to_ingestion_without_a_poll(
    redis: Redis, redis_url: str, emulator: EmulatorControl, http: httpx.AsyncClient
) -> None:
    """The end reaches ingestion through the event alone: no poll between submission and the
    enqueued ingestion (counted at the emulator), and the jobs end with their results."""
    settings = hook_settings(redis_url, emulator.url)
    ctx = await make_ctx(settings, http)
    with serve(create_app(settings)) as api:
        emulator.configure(turnaround_s=0.3, webhook_url=f"{api}{PATH}", webhook_secret=SECRET)
        job_ids = await enqueue_jobs(ctx["ledger"], 5)
        await ctx["redis"].set(keys.LEADER_FENCE, "1")
        bid = new_batch_id()
        lane = effective(settings, "openai", MODEL, ENDPOINT)
        await Batches(redis).reserve(lane, bid, token=1, now_ms=int(time.time() * 1000), chunk=5000)
        assert await submit_batch(ctx, bid) is SubmitOutcome.SUBMITTED
        record = await Batches(redis).get(bid)
        assert record is not None
        pbid = record.provider_batch_id

        async def ingestion_enqueued() -> bool:
            return bool(await redis.exists(f"arq:job:{tasks.ingest_job_id(bid)}"))

        await wait_for(ingestion_enqueued, "the event")
        polls = [
            r for r in emulator.requests() if r["method"] == "GET" and r["path"] == f"/v1/batches/{pbid}"
        ]
        assert polls == []
        assert [e["type"] for e in emulator.events()] == ["batch.completed"]
        assert emulator.events()[0]["data"] == {"id": pbid}
        worker = await run_burst(settings)
    assert worker.jobs_complete >= 1
    states = [await redis.hget(keys.job(j), "state") for j in job_ids]  # type: ignore[misc]
    assert states == [b"succeeded"] * 5
    record = await Batches(redis).get(bid)
    assert record is not None
    assert record.state == "ingested"
    assert record.raw.get("output_file_id")  # read once by ingestion, so the output is deleted too
    await ctx["redis"].aclose()


def test_emulator_events_verify_with_the_reference_library(emulator: EmulatorControl) -> None:
    """What the emulator sends verifies with the standardwebhooks library (a real receiver)."""
    with running_receiver(secrets=(SECRET,)) as receiver:
        emulator.configure(turnaround_s=0, webhook_url=receiver.url, webhook_secret=SECRET)
        upload = httpx.post(
            f"{emulator.url}/v1/files",
            headers={"authorization": "Bearer sk"},
            files={
                "file": (
                    "in.jsonl",
                    orjson.dumps(
                        {
                            "custom_id": "a",
                            "method": "POST",
                            "url": ENDPOINT,
                            "body": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
                        }
                    ),
                )
            },
            data={"purpose": "batch"},
        )
        upload.raise_for_status()
        created = httpx.post(
            f"{emulator.url}/v1/batches",
            headers={"authorization": "Bearer sk"},
            json={"input_file_id": upload.json()["id"], "endpoint": ENDPOINT, "completion_window": "24h"},
        )
        created.raise_for_status()
        deadline = time.monotonic() + 20
        while not receiver.requests:
            assert time.monotonic() < deadline, "no event arrived"
            time.sleep(0.02)
    got = receiver.requests[0]
    assert got.verified
    event = orjson.loads(got.body)
    assert event["type"] == "batch.completed"
    assert event["object"] == "event"
    assert event["data"] == {"id": created.json()["id"]}
    assert got.headers["webhook-id"] == event["id"]


async def test_an_event_before_the_id_is_recorded_makes_the_first_poll_immediate(
    redis: Redis, redis_url: str, emulator: EmulatorControl, http: httpx.AsyncClient
) -> None:
    """The event outruns the submission's last step (recording the provider's id): it is kept, and
    that step then schedules the first poll at once instead of a safety-net interval away."""
    settings = hook_settings(redis_url, emulator.url)
    ctx = await make_ctx(settings, http)
    answers: list[dict[str, Any]] = []
    async with asgi(create_app(settings, redis=redis)) as client:

        async def event_first(batch_id: str, provider_batch_id: str) -> None:
            body, headers = signed(batch_event(provider_batch_id), "msg_early")
            answers.append((await client.post(PATH, content=body, headers=headers)).json())

        ctx["hooks"]["after_create"] = event_first
        bid, _ = await submitted_batch(ctx)
    assert answers == [{"status": "unknown_batch", "batch_id": None}]
    record = await Batches(redis).get(bid)
    assert record is not None
    assert record.submitted_ms is not None
    assert await redis.zscore(keys.BATCHES_POLL, bid) == record.submitted_ms  # due now, not in 900 s
    await ctx["redis"].aclose()
