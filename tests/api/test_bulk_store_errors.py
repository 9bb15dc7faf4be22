"""Bulk intake when Redis refuses some jobs: each item answers for itself once any job was stored
(a retry of the whole request would store those twice); a request that stored nothing fails whole."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from api.app import create_app
from api.jobs import _store_failed
from scheduler.ledger import ids, keys
from scheduler.ledger.jobs import NewJob
from scheduler.ledger.ledger import Ledger
from tests.api.harness import ACME, asgi
from tests.conftest import make_settings


def item(model: str, **extra: object) -> dict[str, object]:
    return {"provider": "openai", "body": {"model": model, "messages": []}, **extra}


@pytest.fixture
async def out_of_memory(redis: Redis) -> AsyncIterator[None]:
    """Redis refusing every write (noeviction, a limit below what it holds)."""
    await redis.config_set("maxmemory-policy", "noeviction")
    await redis.config_set("maxmemory", 1)
    try:
        yield
    finally:
        await redis.config_set("maxmemory", 0)


async def test_a_job_refused_by_redis_answers_alone_and_the_stored_ones_answer_202(
    redis_url: str, redis: Redis
):
    http_settings = make_settings(redis_url)
    lane = "openai:broken:/v1/chat/completions"
    await redis.set(keys.lane_queue(lane), "not a sorted set")  # that lane's jobs cannot be queued
    async with asgi(create_app(http_settings, redis=redis), ACME) as client:
        response = await client.post(
            "/v1/jobs/bulk", json={"jobs": [item("m"), item("broken", idempotency_key="b"), item("m")]}
        )
        assert response.status_code == 200
        results = response.json()["results"]
        assert [r["status"] for r in results] == [202, 500, 202]
        assert results[1]["error"]["type"] == "internal_error"
        for stored in (results[0], results[2]):
            got = await client.get(f"/v1/jobs/{stored['job']['id']}")
            assert got.json() == stored["job"]
    assert len(await redis.keys(keys.job("*"))) == 2
    assert not await redis.exists(keys.idempotency("acme", "b"))


@pytest.mark.usefixtures("out_of_memory")
async def test_redis_out_of_memory_refuses_a_bulk_request_whole_and_a_single_one(
    redis_url: str, redis: Redis
):
    async with asgi(create_app(make_settings(redis_url), redis=redis), ACME) as client:
        bulk = await client.post("/v1/jobs/bulk", json={"jobs": [item("m"), item("n")]})
        single = await client.post("/v1/jobs", json=item("m"))
    for response in (bulk, single):
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.json()["error"]["type"] == "unavailable"
    assert await redis.keys(keys.job("*")) == []


@pytest.mark.usefixtures("out_of_memory")
async def test_an_item_redis_refused_for_memory_answers_503_beside_stored_ones(redis: Redis):
    """Mid-request (a later chunk's call began over the limit): that item's entry says retry it."""
    new = NewJob(
        id=ids.job_id(), tenant="acme", provider="openai", endpoint="/v1/chat/completions", model="m",
        body=b"{}", deadline_ms=2**41, created_ms=2**40,
    )  # fmt: skip
    [refused] = await Ledger(redis).enqueue_chunk([new])
    assert isinstance(refused, ResponseError)
    entry = _store_failed(new, refused)
    assert entry["status"] == 503
    assert entry["error"]["type"] == "unavailable"
