"""The jobs API end to end: enqueue, idempotency, bulk, read, list, cancel, long poll, health."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from redis.asyncio import Redis

from api.app import create_app
from config.settings import LimitSettings, Settings, TenantSettings
from scheduler.ledger import keys
from scheduler.ledger.ledger import Finish, Ledger
from tests.api.harness import ACME, asgi, asgi_client, bs_key_count, serve
from tests.conftest import make_settings

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def job(**overrides: object) -> dict[str, object]:
    return {"provider": "openai", "body": CHAT, **overrides}


@pytest.fixture(scope="module")
def api_url(redis_url: str) -> Iterator[str]:
    """A real uvicorn server running our app over real HTTP, shared by this module's tests."""
    with serve(create_app(make_settings(redis_url))) as url:
        yield url


@pytest.fixture
async def http(api_url: str, redis: Redis):
    """A real-HTTP client for tenant acme, on an empty Redis."""
    async with httpx.AsyncClient(base_url=api_url, headers=ACME, timeout=30) as client:
        yield client


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def test_enqueue_returns_202_with_the_stored_job(http: httpx.AsyncClient, redis: Redis):
    response = await http.post("/v1/jobs", json=job(tags={"feature": "summaries"}))
    assert response.status_code == 202
    view = response.json()
    assert view["status"] == "queued"
    assert view["endpoint"] == "/v1/chat/completions"
    assert view["lane"] == "openai:gpt-4o-mini:/v1/chat/completions"
    assert view["tags"] == {"feature": "summaries"}
    assert await redis.zscore(keys.lane_queue(view["lane"]), view["id"]) is not None
    stored = await Ledger(redis).get(view["id"])
    assert stored is not None
    assert stored.tenant == "acme"
    assert response.headers["x-request-id"]


async def test_defaults_endpoint_per_provider_kind_and_deadline_from_the_lane(
    settings: Settings, redis: Redis
):
    async with asgi_client(settings, redis) as api:
        before = now_ms()
        view = (
            await api.post("/v1/jobs", json={"provider": "anthropic", "body": {"model": "claude"}})
        ).json()
    assert view["endpoint"] == "/v1/messages"
    deadline = datetime.fromisoformat(view["deadline"]).timestamp() * 1000
    assert before + 86_400_000 <= deadline <= now_ms() + 86_400_000


async def test_openai_serves_embeddings_and_responses(settings: Settings, redis: Redis):
    async with asgi_client(settings, redis) as api:
        for endpoint in ("/v1/embeddings", "/v1/responses"):
            response = await api.post(
                "/v1/jobs", json=job(endpoint=endpoint, body={"model": "m", "input": "x"})
            )
            assert response.status_code == 202
            assert response.json()["endpoint"] == endpoint


async def test_same_idempotency_key_returns_the_same_job_once_stored(http: httpx.AsyncClient, redis: Redis):
    first = await http.post("/v1/jobs", json=job(), headers={"Idempotency-Key": "order-1"})
    again = await http.post("/v1/jobs", json=job(idempotency_key="order-1"))
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert len(await redis.keys(keys.job("*"))) == 1


async def test_retry_with_deadline_in_is_the_same_request(settings: Settings, redis: Redis):
    """A relative deadline moves with the clock, so it is left out of the idempotency hash."""
    async with asgi_client(settings, redis) as api:
        first = await api.post("/v1/jobs", json=job(deadline_in=600, idempotency_key="k"))
        await asyncio.sleep(0.01)
        again = await api.post("/v1/jobs", json=job(deadline_in=600, idempotency_key="k"))
    assert again.status_code == 202
    assert again.json()["id"] == first.json()["id"]


async def test_fifty_concurrent_http_enqueues_with_one_key_make_one_job(
    http: httpx.AsyncClient, redis: Redis
):
    responses = await asyncio.gather(
        *(http.post("/v1/jobs", json=job(), headers={"Idempotency-Key": "same"}) for _ in range(50))
    )
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["id"] for r in responses}) == 1
    assert len(await redis.keys(keys.job("*"))) == 1
    assert await redis.zcard(keys.tenant_jobs("acme")) == 1


async def test_bulk_answers_each_item_in_order_and_a_bad_item_rejects_only_itself(
    http: httpx.AsyncClient, redis: Redis
):
    items = [
        job(tags={"n": "0"}),
        job(provider="nope"),
        job(body={"messages": []}),
        job(tags={"n": "3"}, idempotency_key="dup"),
        job(tags={"n": "3"}, idempotency_key="dup"),
        job(tags={"n": "5"}, idempotency_key="dup"),
        "not an object",
    ]
    response = await http.post("/v1/jobs/bulk", json={"jobs": items})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["status"] for r in results] == [202, 422, 422, 202, 202, 409, 422]
    assert results[0]["job"]["tags"] == {"n": "0"}
    assert results[1]["error"]["field"] == "provider"
    assert results[2]["error"]["field"] == "body.model"
    assert results[3]["job"]["id"] == results[4]["job"]["id"]
    assert results[5]["error"]["type"] == "idempotency_conflict"
    assert len(await redis.keys(keys.job("*"))) == 2


async def test_get_returns_the_job_and_its_result_once_finished(http: httpx.AsyncClient, redis: Redis):
    view = (await http.post("/v1/jobs", json=job())).json()
    await Ledger(redis).finish(
        [
            Finish(
                id=view["id"], state="succeeded", route="batch", from_states=("queued",), result=b'{"ok": 1}'
            )
        ],
        now_ms(),
    )
    got = (await http.get(f"/v1/jobs/{view['id']}")).json()
    assert got["status"] == "succeeded"
    assert got["result"] == {"ok": 1}
    assert got["completed_at"] is not None


async def test_long_poll_returns_as_soon_as_the_job_ends(redis_url: str, redis: Redis):
    """The poll waits up to an hour: only the job's end can answer it within the test's timeout."""
    settings = make_settings(redis_url, limits=LimitSettings(max_wait_s=3600))
    async with asgi_client(settings, redis) as api:
        view = (await api.post("/v1/jobs", json=job())).json()
        (_, listening_before), *_ = await redis.pubsub_numsub(keys.JOBS_ENDED)
        polled = asyncio.create_task(api.get(f"/v1/jobs/{view['id']}", params={"wait": 3600}))
        # This app's watcher subscribes before the poll re-reads the job, so no end is missed after it.
        while (await redis.pubsub_numsub(keys.JOBS_ENDED))[0][1] == listening_before:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        codes = await Ledger(redis).finish(
            [Finish(id=view["id"], state="succeeded", route="batch", from_states=("queued",), result=b"{}")],
            now_ms(),
        )
        assert codes == ["ok"]
        response = await polled
    assert response.status_code == 200
    assert response.json()["status"] == "succeeded"


async def test_long_poll_wakes_on_cancel_too(http: httpx.AsyncClient, redis: Redis):
    view = (await http.post("/v1/jobs", json=job())).json()

    async def cancel_later() -> None:
        await asyncio.sleep(0.2)
        await Ledger(redis).cancel(view["id"], now_ms())

    canceller = asyncio.create_task(cancel_later())
    polled = await http.get(f"/v1/jobs/{view['id']}", params={"wait": 30})
    await canceller
    assert polled.json()["status"] == "cancelled"


async def test_long_poll_on_a_live_job_answers_its_state_when_the_wait_ends(settings: Settings, redis: Redis):
    async with asgi_client(settings, redis) as api:
        view = (await api.post("/v1/jobs", json=job())).json()
        polled = await api.get(f"/v1/jobs/{view['id']}", params={"wait": 0.2})
    assert polled.status_code == 200
    assert polled.json()["status"] == "queued"


async def test_list_is_newest_first_filtered_and_cursor_paginated(settings: Settings, redis: Redis):
    async with asgi_client(settings, redis) as api:
        ids = []
        for n in range(5):
            feature = "a" if n % 2 == 0 else "b"
            ids.append((await api.post("/v1/jobs", json=job(tags={"feature": feature}))).json()["id"])
        await api.post(f"/v1/jobs/{ids[0]}/cancel")
        first = (await api.get("/v1/jobs", params={"limit": 2})).json()
        second = (await api.get("/v1/jobs", params={"limit": 2, "cursor": first["next_cursor"]})).json()
        third = (await api.get("/v1/jobs", params={"limit": 2, "cursor": second["next_cursor"]})).json()
        only_a = (await api.get("/v1/jobs", params={"feature": "a"})).json()
        cancelled = (await api.get("/v1/jobs", params={"status": "cancelled"})).json()
    pages = [v["id"] for page in (first, second, third) for v in page["data"]]
    assert pages == list(reversed(ids))
    assert third["next_cursor"] is None
    assert [v["id"] for v in only_a["data"]] == [ids[4], ids[2], ids[0]]
    assert [v["id"] for v in cancelled["data"]] == [ids[0]]


async def test_cancel_returns_the_cancelled_job_and_takes_it_off_its_lane(
    http: httpx.AsyncClient, redis: Redis
):
    view = (await http.post("/v1/jobs", json=job())).json()
    response = await http.post(f"/v1/jobs/{view['id']}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert await redis.zscore(keys.lane_queue(view["lane"]), view["id"]) is None


async def test_illegal_state_changes_are_refused(http: httpx.AsyncClient, redis: Redis):
    """Cancelling an ended job is a 409 and changes nothing; finishing a cancelled job is skipped."""
    ledger = Ledger(redis)
    done = (await http.post("/v1/jobs", json=job())).json()
    await ledger.finish(
        [Finish(id=done["id"], state="failed", route="batch", from_states=("queued",))], now_ms()
    )
    refused = await http.post(f"/v1/jobs/{done['id']}/cancel")
    assert refused.status_code == 409
    assert refused.json()["error"]["type"] == "illegal_transition"
    assert (await ledger.get(done["id"])).state == "failed"  # type: ignore[union-attr]

    cancelled = (await http.post("/v1/jobs", json=job())).json()
    assert (await http.post(f"/v1/jobs/{cancelled['id']}/cancel")).status_code == 200
    assert (await http.post(f"/v1/jobs/{cancelled['id']}/cancel")).status_code == 409
    codes = await ledger.finish(
        [Finish(id=cancelled["id"], state="succeeded", route="batch", from_states=("queued", "batched"))],
        now_ms(),
    )
    assert codes == ["skip:cancelled"]


async def test_absolute_deadline_is_kept(settings: Settings, redis: Redis):
    deadline = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    async with asgi_client(settings, redis) as api:
        view = (await api.post("/v1/jobs", json=job(deadline=deadline.isoformat()))).json()
    assert datetime.fromisoformat(view["deadline"]) == deadline


async def test_healthz_and_readyz(http: httpx.AsyncClient):
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    assert (await http.get("/readyz")).status_code == 200


async def test_readyz_is_503_when_redis_does_not_answer():
    from batchshift.embedded_redis import free_port

    app = create_app(make_settings(f"redis://127.0.0.1:{free_port()}/0"))
    async with asgi(app) as client:
        assert (await client.get("/healthz")).status_code == 200
        response = await client.get("/readyz")
        enqueue = await client.post("/v1/jobs", json=job(), headers={"authorization": "Bearer acme-key"})
    assert response.status_code == 503
    # Intake with the store out of reach: 503 with Retry-After (safe to send again), not a 500.
    assert enqueue.status_code == 503, enqueue.text
    assert enqueue.headers["retry-after"] == "1"
    assert enqueue.json()["error"]["type"] == "unavailable"


async def test_openapi_documents_the_routes_and_models(http: httpx.AsyncClient):
    spec = (await http.get("/openapi.json")).json()
    assert {
        "/v1/jobs",
        "/v1/jobs/bulk",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/cancel",
        "/healthz",
        "/readyz",
    } <= set(spec["paths"])
    assert {"JobRequest", "BulkRequest", "JobView", "BulkResponse", "JobList", "ErrorResponse"} <= set(
        spec["components"]["schemas"]
    )
    post = spec["paths"]["/v1/jobs"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/JobRequest")


async def test_views_match_the_documented_model(http: httpx.AsyncClient):
    from api.schemas import BulkResponse, JobList, JobView

    view = (await http.post("/v1/jobs", json=job(callback_url="https://example.com/hook"))).json()
    JobView.model_validate(view)
    JobList.model_validate((await http.get("/v1/jobs")).json())
    BulkResponse.model_validate((await http.post("/v1/jobs/bulk", json={"jobs": [job(), {}]})).json())


async def test_incoming_request_id_is_echoed(http: httpx.AsyncClient):
    response = await http.get("/healthz", headers={"x-request-id": "trace-123"})
    assert response.headers["x-request-id"] == "trace-123"


async def test_nothing_stored_when_the_bulk_is_refused_whole(settings: Settings, redis: Redis):
    small = settings.model_copy(update={"limits": settings.limits.model_copy(update={"max_bulk_items": 3})})
    async with asgi_client(small, redis) as api:
        before = await bs_key_count(redis)
        response = await api.post("/v1/jobs/bulk", json={"jobs": [job() for _ in range(4)]})
    assert response.status_code == 413
    assert response.json()["error"]["field"] == "jobs"
    assert await bs_key_count(redis) == before


async def test_a_retry_after_the_budget_ran_out_answers_the_job_it_made(redis_url: str, redis: Redis):
    """Admission refuses new jobs once the envelope is spent; a retry of one already made is not new."""
    request = job(idempotency_key="retried", deadline_in=3600)
    async with asgi_client(make_settings(redis_url), redis) as api:
        first = (await api.post("/v1/jobs", json=request)).json()
    spent = make_settings(
        redis_url,
        tenants={"acme": TenantSettings(api_key="acme-key", monthly_budget_usd=0, budget_policy="reject")},
    )
    async with asgi_client(spent, redis) as api:
        retry = await api.post("/v1/jobs", json=request)
        assert retry.status_code == 202, retry.text
        assert retry.json()["id"] == first["id"]
        [entry] = (await api.post("/v1/jobs/bulk", json={"jobs": [request]})).json()["results"]
        assert entry["status"] == 202
        assert entry["job"]["id"] == first["id"]
        assert (await api.post("/v1/jobs", json=job(idempotency_key="new"))).status_code == 402
    assert await bs_key_count(redis) > 0
    assert await redis.zcard(keys.tenant_jobs("acme")) == 1
