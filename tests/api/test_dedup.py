"""Deduplication through the jobs API: the enqueue answer, reads and cancels show the group."""

from __future__ import annotations

from redis.asyncio import Redis

from config.settings import DedupSettings, Settings
from scheduler.ledger import keys
from tests.api.harness import asgi_client
from tests.conftest import make_settings

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
LANE = "openai:gpt-4o-mini:/v1/chat/completions"


def dedup_settings(redis_url: str) -> Settings:
    settings = make_settings(redis_url)
    acme = settings.tenants["acme"]
    settings.tenants["acme"] = acme.model_copy(update={"dedup": DedupSettings(features=["faq"])})
    return settings


def job(**overrides: object) -> dict[str, object]:
    return {"provider": "openai", "body": CHAT, "tags": {"feature": "faq"}, **overrides}


async def test_the_enqueue_answer_names_the_job_a_duplicate_follows(redis: Redis, redis_url: str):
    async with asgi_client(dedup_settings(redis_url), redis) as client:
        first = (await client.post("/v1/jobs", json=job())).json()
        second = await client.post("/v1/jobs", json=job(deadline_in=90_000))
        bulk = (
            await client.post("/v1/jobs/bulk", json={"jobs": [job(), job(tags={"feature": "chat"})]})
        ).json()
        read = (await client.get(f"/v1/jobs/{second.json()['id']}")).json()
    assert first["deduplicated_with"] is None
    assert second.status_code == 202
    assert (second.json()["status"], second.json()["deduplicated_with"]) == ("queued", first["id"])
    assert bulk["results"][0]["job"]["deduplicated_with"] == first["id"]
    assert bulk["results"][1]["job"]["deduplicated_with"] is None  # a feature not opted in
    assert (read["status"], read["deduplicated_with"]) == ("queued", first["id"])
    assert await redis.zcard(keys.lane_queue(LANE)) == 2  # the first job and the other feature's


async def test_cancelling_the_leader_through_the_api_promotes_its_follower(redis: Redis, redis_url: str):
    async with asgi_client(dedup_settings(redis_url), redis) as client:
        first = (await client.post("/v1/jobs", json=job())).json()
        second = (await client.post("/v1/jobs", json=job(deadline_in=90_000))).json()
        cancelled = await client.post(f"/v1/jobs/{first['id']}/cancel")
        heir = (await client.get(f"/v1/jobs/{second['id']}")).json()
    assert cancelled.status_code == 200, cancelled.text
    assert (heir["status"], heir["deduplicated_with"]) == ("queued", None)
    assert await redis.zrange(keys.lane_queue(LANE), 0, -1) == [second["id"].encode()]
