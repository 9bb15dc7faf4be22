"""Webhook delivery routes: the tenant's deliveries by status, and replay of dead-lettered events."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from config.settings import Settings, TenantSettings, WebhookSettings
from scheduler.ledger import keys
from scheduler.ledger.ids import job_id
from scheduler.ledger.jobs import NewJob
from scheduler.ledger.ledger import Finish, Ledger
from tests.api.harness import ACME, GLOBEX, asgi_client
from tests.conftest import make_settings
from tests.workers.receiver import running_receiver
from workers.webhooks import Deliverer, build_client

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def api_settings(redis_url: str) -> Settings:
    return make_settings(
        redis_url,
        webhooks=WebhookSettings(retry_schedule_s=[], jitter=0),  # one attempt, then dead-lettered
        webhook_allowlist=["127.0.0.0/8"],
        tenants={
            "acme": TenantSettings(api_key="acme-key", webhook_secrets=[SECRET]),
            "globex": TenantSettings(api_key="globex-key", webhook_secrets=[SECRET]),
        },
    )


async def finished(redis: Redis, url: str, tenant: str = "acme") -> str:
    ledger = Ledger(redis)
    jid = job_id()
    now = int(time.time() * 1000) - 1000
    await ledger.enqueue(
        NewJob(
            jid,
            tenant,
            "openai",
            "/v1/chat/completions",
            "m",
            b"{}",
            now + 60_000,
            now,
            callback_url=url,
            state="sync",
        )
    )
    await ledger.finish([Finish(jid, "succeeded", "sync", from_states=("sync",), result=b"{}")], now)
    return jid


async def deliver(settings: Settings, redis: Redis) -> None:
    async with build_client(settings) as client:
        await Deliverer(settings, redis, client).run()


async def test_failed_deliveries_are_listed_for_their_tenant_only(redis_url, redis) -> None:
    settings = api_settings(redis_url)
    with running_receiver(lambda n: (500, {}, 0.0)) as rx:
        dead = await finished(redis, rx.url)
        await deliver(settings, redis)
        pending = await finished(redis, rx.url)
        await finished(redis, rx.url, tenant="globex")
    async with asgi_client(settings, redis) as api:
        failed = (await api.get("/v1/webhooks/deliveries", params={"status": "failed"})).json()
        everything = (await api.get("/v1/webhooks/deliveries")).json()
        theirs = (await api.get("/v1/webhooks/deliveries", headers=GLOBEX)).json()
        bad = await api.get("/v1/webhooks/deliveries", params={"status": "lost"})
    [row] = failed["data"]
    assert row["id"] == f"wh_{dead}"
    assert row["event_id"] == f"msg_{dead}"
    assert row["status"] == "dead"
    assert row["attempts"] == 1
    assert row["last_status"] == 500
    assert {r["id"] for r in everything["data"]} == {f"wh_{dead}", f"wh_{pending}"}
    assert len(theirs["data"]) == 1
    assert bad.status_code == 422


async def test_replay_redelivers_a_dead_lettered_event_under_the_same_id(redis_url, redis) -> None:
    settings = api_settings(redis_url)
    with running_receiver(lambda n: (500 if n == 0 else 200, {}, 0.0), secrets=(SECRET,)) as rx:
        jid = await finished(redis, rx.url)
        await deliver(settings, redis)
        async with asgi_client(settings, redis) as api:
            assert (
                await api.post("/v1/webhooks/replay", json={"ids": [f"wh_{jid}"]}, headers=GLOBEX)
            ).json()["replayed"] == []  # another tenant's delivery is not theirs to replay
            answer = (await api.post("/v1/webhooks/replay", json={"ids": [f"wh_{jid}"]})).json()
            assert answer["replayed"] == [f"wh_{jid}"]
            await deliver(settings, redis)
            [row] = (await api.get("/v1/webhooks/deliveries")).json()["data"]
    assert [r.headers["webhook-id"] for r in rx.requests] == [f"msg_{jid}", f"msg_{jid}"]
    assert rx.requests[1].verified
    assert row["status"] == "delivered"
    assert row["replays"] == 1
    assert await redis.zcard(keys.WEBHOOKS_DEAD) == 0


async def test_replay_since_a_time_takes_every_dead_delivery_after_it(redis_url, redis) -> None:
    settings = api_settings(redis_url)
    with running_receiver(lambda n: (410 if n < 2 else 200, {}, 0.0)) as rx:
        first, second = await finished(redis, rx.url), await finished(redis, rx.url)
        await deliver(settings, redis)  # the first answer 410 disables the URL: both end dead-lettered
        async with asgi_client(settings, redis) as api:
            answer = (await api.post("/v1/webhooks/replay", json={"since": "2000-01-01T00:00:00Z"})).json()
            assert sorted(answer["replayed"]) == sorted([f"wh_{first}", f"wh_{second}"])
            await deliver(settings, redis)
            statuses = {
                r["id"]: r["status"] for r in (await api.get("/v1/webhooks/deliveries")).json()["data"]
            }
    assert set(statuses.values()) == {"delivered"}


async def test_replay_refuses_a_malformed_body(redis_url, redis) -> None:
    async with asgi_client(api_settings(redis_url), redis, headers=ACME) as api:
        bodies: list[dict[str, object]] = [
            {},
            {"ids": []},
            {"ids": ["a"], "since": "2020-01-01T00:00:00Z"},
            {"since": "yesterday"},
        ]
        for body in bodies:
            response = await api.post("/v1/webhooks/replay", json=body)
            assert response.status_code == 422, body


async def test_delivery_cursor_out_of_range_is_422_not_500(redis_url, redis) -> None:
    async with asgi_client(api_settings(redis_url), redis, headers=ACME) as api:
        for cursor in ("9223372036854775807", "-1", "99999999999999999999999"):
            response = await api.get("/v1/webhooks/deliveries", params={"cursor": cursor})
            assert response.status_code == 422, (cursor, response.text)
            assert response.json()["error"]["field"] == "cursor"
