"""Every bad input the issue lists: its status, an error naming the field, and nothing stored."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from config.settings import Settings
from tests.api.harness import asgi_client, bs_snapshot

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
SMALL_BODY_LIMIT = 4096


def job(**overrides: object) -> dict[str, object]:
    return {"provider": "openai", "body": CHAT, **overrides}


def iso(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).isoformat()


@pytest.fixture
async def api(settings: Settings, redis: Redis) -> AsyncIterator[httpx.AsyncClient]:
    limits = settings.limits.model_copy(update={"max_body_bytes": SMALL_BODY_LIMIT, "max_bulk_items": 5})
    async with asgi_client(settings.model_copy(update={"limits": limits}), redis) as client:
        # One stored job, so "unchanged" is checked against a ledger that is not empty.
        assert (await client.post("/v1/jobs", json=job(idempotency_key="taken"))).status_code == 202
        yield client


def without(key: str) -> dict[str, object]:
    request = job()
    del request[key]
    return request


BAD_JOBS = [
    pytest.param(job(provider="nope"), 422, "provider", id="unknown-provider"),
    pytest.param(without("provider"), 422, "provider", id="missing-provider"),
    pytest.param(job(provider=7), 422, "provider", id="provider-not-a-string"),
    pytest.param(job(endpoint="/v1/messages"), 422, "endpoint", id="endpoint-not-served-openai"),
    pytest.param(
        job(provider="anthropic", endpoint="/v1/chat/completions"),
        422,
        "endpoint",
        id="endpoint-not-served-anthropic",
    ),
    pytest.param(job(body=["a"]), 422, "body", id="body-a-list"),
    pytest.param(job(body="hello"), 422, "body", id="body-a-string"),
    pytest.param(without("body"), 422, "body", id="body-missing"),
    pytest.param(job(body={"messages": []}), 422, "body.model", id="model-missing"),
    pytest.param(job(body={"model": ""}), 422, "body.model", id="model-empty"),
    pytest.param(job(body={**CHAT, "stream": True}), 422, "body.stream", id="stream-true"),
    pytest.param(job(deadline="next tuesday"), 422, "deadline", id="deadline-unparsable"),
    pytest.param(job(deadline="2030-01-01T00:00:00"), 422, "deadline", id="deadline-without-offset"),
    pytest.param(job(deadline=iso(-timedelta(minutes=1))), 422, "deadline", id="deadline-in-the-past"),
    pytest.param(job(deadline=iso(timedelta(days=8))), 422, "deadline", id="deadline-beyond-horizon"),
    pytest.param(job(deadline_in=-5), 422, "deadline_in", id="deadline-in-negative"),
    pytest.param(job(deadline_in=8 * 86400), 422, "deadline_in", id="deadline-in-beyond-horizon"),
    pytest.param(job(deadline_in="soon"), 422, "deadline_in", id="deadline-in-not-a-number"),
    pytest.param(job(deadline_in=1e306), 422, "deadline_in", id="deadline-in-overflows"),
    pytest.param(
        job(deadline=iso(timedelta(hours=1)), deadline_in=60), 422, "deadline_in", id="both-deadlines"
    ),
    pytest.param(job(callback_url="ftp://example.com/x"), 422, "callback_url", id="callback-not-http"),
    pytest.param(job(callback_url="not a url"), 422, "callback_url", id="callback-no-scheme"),
    pytest.param(job(callback_url="https://"), 422, "callback_url", id="callback-no-host"),
    pytest.param(job(tags=["feature"]), 422, "tags", id="tags-not-an-object"),
    pytest.param(job(tags={"feature": 3}), 422, "tags.feature", id="tag-value-not-a-string"),
    pytest.param(job(tags={f"t{i}": "v" for i in range(33)}), 422, "tags", id="too-many-tags"),
    pytest.param(job(tags={"feature\n": "v"}), 422, "tags", id="tag-name-with-newline"),
    pytest.param(job(colour="blue"), 422, "colour", id="unknown-field"),
    pytest.param(job(idempotency_key="has space"), 422, "idempotency_key", id="idempotency-key-bad-chars"),
    pytest.param(job(idempotency_key="key\n"), 422, "idempotency_key", id="idempotency-key-newline"),
    pytest.param(job(body={**CHAT, "pad": "x" * SMALL_BODY_LIMIT}), 413, "body", id="body-over-limit"),
    pytest.param(job(deadline_in=-1e308), 422, "deadline_in", id="deadline-in-minus-1e308"),
    pytest.param(job(deadline_in=0), 422, "deadline_in", id="deadline-in-zero"),
    pytest.param(job(deadline="0001-01-01T00:00:00+14:00"), 422, "deadline", id="deadline-before-year-1"),
    pytest.param(job(deadline="9999-12-31T23:59:59-14:00"), 422, "deadline", id="deadline-after-9999"),
    pytest.param(job(callback_url="https://example.com/a\r\nX: y"), 422, "callback_url", id="callback-crlf"),
    pytest.param(job(callback_url="https://example.com/a b"), 422, "callback_url", id="callback-space"),
    pytest.param(
        job(callback_url="https://example.com:99999/"), 422, "callback_url", id="callback-port-99999"
    ),
    pytest.param(job(callback_url="https://example.com:0/"), 422, "callback_url", id="callback-port-0"),
    pytest.param(job(callback_url="https://example.com:x/"), 422, "callback_url", id="callback-port-nan"),
    pytest.param(job(callback_url="/relative/hook"), 422, "callback_url", id="callback-relative"),
    pytest.param(job(body={**CHAT, "model": "gpt}4o"}), 422, "body.model", id="model-with-brace"),
    pytest.param(job(body={**CHAT, "model": "gpt-4o-mini\n"}), 422, "body.model", id="model-with-newline"),
    pytest.param(job(body={**CHAT, "model": "gpt 4o"}), 422, "body.model", id="model-with-space"),
    pytest.param(job(body={**CHAT, "model": 7}), 422, "body.model", id="model-not-a-string"),
    pytest.param(job(tags={"feature": "a}b"}), 422, "tags.feature", id="tag-value-with-brace"),
    pytest.param(job(tags={"feature": "a\nb"}), 422, "tags.feature", id="tag-value-with-newline"),
    pytest.param(
        job(idempotency_key="taken", tags={"other": "request"}), 409, "idempotency_key", id="key-reused"
    ),
]


@pytest.mark.parametrize(("request_json", "status", "field"), BAD_JOBS)
async def test_bad_job_is_refused_naming_the_field_and_nothing_is_stored(
    api: httpx.AsyncClient, redis: Redis, request_json: dict[str, object], status: int, field: str
):
    before = await bs_snapshot(redis)
    response = await api.post("/v1/jobs", json=request_json)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field
    assert field in error["message"]
    assert await bs_snapshot(redis) == before


@pytest.mark.parametrize(("request_json", "status", "field"), BAD_JOBS)
async def test_bad_bulk_item_gets_the_same_error_in_its_entry(
    api: httpx.AsyncClient, redis: Redis, request_json: dict[str, object], status: int, field: str
):
    before = await bs_snapshot(redis)
    response = await api.post("/v1/jobs/bulk", json={"jobs": [request_json]})
    assert response.status_code == 200
    [entry] = response.json()["results"]
    assert entry["status"] == status
    assert entry["error"]["field"] == field
    assert await bs_snapshot(redis) == before


RAW_BODIES = [
    pytest.param(b"{not json", 400, "malformed_json", id="malformed-json"),
    pytest.param(b"", 400, "malformed_json", id="empty-body"),
    pytest.param(b"[1, 2]", 422, "invalid_request", id="json-not-an-object"),
    pytest.param(
        orjson.dumps(job(body={"model": "m", "pad": "x" * 2 * SMALL_BODY_LIMIT})),
        413,
        "payload_too_large",
        id="request-over-limit",
    ),
]


@pytest.mark.parametrize(("content", "status", "error_type"), RAW_BODIES)
async def test_unreadable_request_is_refused_and_nothing_is_stored(
    api: httpx.AsyncClient, redis: Redis, content: bytes, status: int, error_type: str
):
    before = await bs_snapshot(redis)
    for path in ("/v1/jobs", "/v1/jobs/bulk"):
        response = await api.post(path, content=content, headers={"content-type": "application/json"})
        if path.endswith("bulk") and status == 413:
            continue  # the bulk limit is larger: checked below
        assert response.status_code == status, (path, response.text)
        assert response.json()["error"]["type"] == error_type
    assert await bs_snapshot(redis) == before


async def test_body_without_content_length_is_cut_at_the_limit(api: httpx.AsyncClient, redis: Redis):
    """A chunked upload has no Content-Length; the bytes read are counted instead."""
    before = await bs_snapshot(redis)
    payload = orjson.dumps(job(body={"model": "m", "pad": "x" * 2 * SMALL_BODY_LIMIT}))

    async def chunks():
        for start in range(0, len(payload), 1024):
            yield payload[start : start + 1024]

    response = await api.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert await bs_snapshot(redis) == before


async def test_bulk_over_its_item_limit_is_413_and_stores_nothing(api: httpx.AsyncClient, redis: Redis):
    before = await bs_snapshot(redis)
    response = await api.post("/v1/jobs/bulk", json={"jobs": [job() for _ in range(6)]})
    assert response.status_code == 413
    assert response.json()["error"]["field"] == "jobs"
    assert await bs_snapshot(redis) == before


async def test_bulk_over_its_byte_limit_is_413(api: httpx.AsyncClient, redis: Redis):
    before = await bs_snapshot(redis)
    pad = "x" * (SMALL_BODY_LIMIT - 200)
    many = {"jobs": [job(body={"model": "m", "pad": pad}) for _ in range(70)]}
    response = await api.post("/v1/jobs/bulk", json=many)
    assert response.status_code == 413
    assert await bs_snapshot(redis) == before


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"jobs": "x"}, id="jobs-not-a-list"),
        pytest.param({}, id="no-jobs"),
        pytest.param({"jobs": [], "x": 1}, id="extra-field"),
    ],
)
async def test_bulk_envelope_must_be_a_jobs_list(api: httpx.AsyncClient, body: dict[str, object]):
    response = await api.post("/v1/jobs/bulk", json=body)
    assert response.status_code == 422


async def test_header_and_body_idempotency_keys_must_agree(api: httpx.AsyncClient, redis: Redis):
    before = await bs_snapshot(redis)
    response = await api.post("/v1/jobs", json=job(idempotency_key="a"), headers={"Idempotency-Key": "b"})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "idempotency_key"
    assert await bs_snapshot(redis) == before


@pytest.mark.parametrize("wait", ["0", "-1", "61", "soon"])
async def test_wait_out_of_range_is_422(api: httpx.AsyncClient, wait: str):
    view = (await api.post("/v1/jobs", json=job())).json()
    response = await api.get(f"/v1/jobs/{view['id']}", params={"wait": wait})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "wait"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"status": "done"}, "status"),
        ({"cursor": "a b"}, "cursor"),
    ],
)
async def test_list_parameters_are_checked(api: httpx.AsyncClient, params: dict[str, object], field: str):
    response = await api.get("/v1/jobs", params=params)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == field


async def test_one_out_of_range_bulk_item_fails_alone(api: httpx.AsyncClient, redis: Redis):
    """deadline_in: -1e308 once failed the whole bulk request with a 500."""
    response = await api.post("/v1/jobs/bulk", json={"jobs": [job(), job(deadline_in=-1e308), job()]})
    assert response.status_code == 200
    statuses = [entry["status"] for entry in response.json()["results"]]
    assert statuses == [202, 422, 202]
    assert response.json()["results"][1]["error"]["field"] == "deadline_in"


async def test_unknown_job_is_404(api: httpx.AsyncClient):
    for path in ("/v1/jobs/job_00000000000000000000000000", "/v1/jobs/..%2F..", "/v1/jobs/" + "x" * 100):
        assert (await api.get(path)).status_code == 404
    assert (await api.post("/v1/jobs/job_00000000000000000000000000/cancel")).status_code == 404


async def test_callback_url_of_a_tenant_without_webhook_secrets_is_refused(settings: Settings, redis: Redis):
    """Webhooks are always signed: without a secret the event could only be dead-lettered later."""
    async with asgi_client(settings, redis, headers={"authorization": "Bearer globex-key"}) as client:
        before = await bs_snapshot(redis)
        response = await client.post("/v1/jobs", json=job(callback_url="https://example.com/hook"))
        assert response.status_code == 422, response.text
        assert response.json()["error"]["field"] == "callback_url"
        assert "webhook_secrets" in response.json()["error"]["message"]
        assert await bs_snapshot(redis) == before
        assert (await client.post("/v1/jobs", json=job())).status_code == 202  # no callback: fine
