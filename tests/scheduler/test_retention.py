"""Retention against a real Redis: ended jobs shed their body and expire; listings read their own
indexes and only the view's fields; the trim pass, run at chosen times, removes what retention allows
and nothing else."""

from __future__ import annotations

import dataclasses

import orjson
from redis.asyncio import Redis

from config.settings import Settings
from scheduler.ledger import ids, keys
from scheduler.ledger.jobs import NewJob
from scheduler.ledger.ledger import Finish, Ledger, Requeue
from scheduler.ledger.retention import Retention
from scheduler.planning.batches import Batches
from scheduler.planning.lanes import effective
from tests.conftest import make_settings

NOW = 1_800_000_000_000
DAY_MS = 86_400_000
TTL_S = 3600
ENDPOINT = "/v1/chat/completions"


def retention_settings(redis_url: str, **retention: object) -> Settings:
    return make_settings(redis_url, retention={"job_ttl_s": TTL_S, "trim_chunk": 7, **retention})


def new_job(created_ms: int = NOW, tenant: str = "acme", feature: str | None = None, **kw: object) -> NewJob:
    return NewJob(
        id=ids.job_id(created_ms),
        tenant=tenant,
        provider="openai",
        endpoint=ENDPOINT,
        model="gpt-4o-mini",
        body=orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 500}]}),
        deadline_ms=created_ms + DAY_MS,
        created_ms=created_ms,
        tags={"feature": feature} if feature else {},
        request_hash="h",
        **kw,  # type: ignore[arg-type]
    )


async def index(redis: Redis, key: str) -> set[str]:
    return {m.decode() for m in await redis.zrange(key, 0, -1)}


async def enqueue(ledger: Ledger, jobs: list[NewJob]) -> list[str]:
    outcomes = await ledger.enqueue_many(jobs)
    assert {o.status for o in outcomes} == {"created"}
    return [j.id for j in jobs]


def done(job_id: str, state: str = "succeeded", from_states: tuple[str, ...] = ("queued",)) -> Finish:
    return Finish(job_id, state, "batch", from_states=from_states, result=b'{"ok":1}')  # type: ignore[arg-type]


async def test_an_ended_job_drops_its_body_and_expires(redis: Redis):
    ledger = Ledger(redis, job_ttl_s=TTL_S)
    finished, cancelled = new_job(), new_job()
    await enqueue(ledger, [finished, cancelled])
    assert await redis.hexists(keys.job(finished.id), "body")
    assert await redis.ttl(keys.job(finished.id)) == -1  # a live job never expires
    assert await ledger.finish([done(finished.id)], NOW) == ["ok"]
    await ledger.cancel(cancelled.id, NOW)
    for job_id in (finished.id, cancelled.id):
        assert not await redis.hexists(keys.job(job_id), "body")
        assert 0 < await redis.ttl(keys.job(job_id)) <= TTL_S
    assert 0 < await redis.pttl(keys.result(finished.id)) <= TTL_S * 1000  # never outlives its job
    record = await ledger.get(finished.id)
    assert record is not None
    assert (record.state, record.size) == ("succeeded", len(finished.body))


async def test_state_indexes_follow_every_transition(redis_url: str, redis: Redis):
    settings = make_settings(redis_url)
    ledger = Ledger(redis)
    a, b, c = new_job(), new_job(), new_job()
    await enqueue(ledger, [a, b, c])
    status = lambda s: keys.tenant_status("acme", s)  # noqa: E731
    assert await index(redis, status("queued")) == {a.id, b.id, c.id}
    await redis.set(keys.LEADER_FENCE, "1")
    lane = effective(settings, "openai", "gpt-4o-mini", ENDPOINT)
    bid = ids.batch_id(NOW)
    assert await Batches(redis).reserve(lane, bid, token=1, now_ms=NOW, chunk=100) == 3
    assert await index(redis, status("batched")) == {a.id, b.id, c.id}
    assert await index(redis, status("queued")) == set()
    await ledger.requeue([Requeue(b.id, "sync", batch_id=bid), Requeue(c.id, "lane", batch_id=bid)], NOW)
    await ledger.finish([done(a.id, "failed", ("batched",))], NOW)
    await ledger.cancel(c.id, NOW)
    assert await index(redis, status("sync")) == {b.id}
    assert await index(redis, status("failed")) == {a.id}
    assert await index(redis, status("cancelled")) == {c.id}
    for state in ("queued", "batched", "succeeded"):
        assert await index(redis, status(state)) == set()


async def test_a_listing_reads_only_the_view_fields(redis: Redis):
    ledger = Ledger(redis)
    await enqueue(ledger, [new_job(NOW + i) for i in range(20)])
    await redis.config_resetstat()
    page, cursor = await ledger.list_jobs("acme", limit=10)
    stats = await redis.info("commandstats")
    assert len(page) == 10
    assert cursor == page[-1].id
    assert "cmdstat_hgetall" not in stats
    assert stats["cmdstat_hmget"]["calls"] == 11  # the page and one look past it
    assert all(r.body == b"" for r in page)


async def test_a_filtered_listing_walks_only_its_index(redis: Redis):
    ledger = Ledger(redis)
    many = await enqueue(ledger, [new_job(NOW + i, feature="bulk") for i in range(300)])
    rare = await enqueue(ledger, [new_job(NOW + 500 + i, feature="rare") for i in range(3)])
    await ledger.finish([done(many[0], "failed")], NOW + 1000)
    await redis.config_resetstat()
    failed, _ = await ledger.list_jobs("acme", status="failed")
    by_feature, _ = await ledger.list_jobs("acme", feature="rare")
    both, _ = await ledger.list_jobs("acme", status="queued", feature="rare")
    stats = await redis.info("commandstats")
    assert [r.id for r in failed] == [many[0]]
    assert [r.id for r in by_feature] == rare[::-1]
    assert [r.id for r in both] == rare[::-1]
    assert stats["cmdstat_hmget"]["calls"] == 1 + 3 + 3  # never the 300 bulk jobs


async def test_trim_deletes_jobs_ended_before_retention_and_keeps_the_rest(redis_url: str, redis: Redis):
    settings = retention_settings(redis_url)
    ledger = Ledger.for_settings(redis, settings)
    old = await enqueue(ledger, [new_job(NOW + i, feature=f"f{i % 2}") for i in range(20)])
    live = await enqueue(ledger, [new_job(NOW + 100)])
    await ledger.finish([done(j) for j in old[:15]], NOW + 1000)
    await ledger.cancel(old[15], NOW + 2000)
    retention = Retention(redis, settings)
    # Before retention has passed, nothing goes.
    early = await retention.trim(NOW + 1000 + TTL_S * 1000)
    assert early.jobs == 0
    report = await retention.trim(NOW + 1001 + TTL_S * 1000)
    assert report.jobs == 15
    assert report.unfinished == []
    for job_id in old[:15]:
        assert not await redis.exists(keys.job(job_id), keys.result(job_id))
    assert await index(redis, keys.tenant_jobs("acme")) == set(old[15:]) | set(live)
    assert await index(redis, keys.tenant_status("acme", "succeeded")) == set()
    assert await index(redis, keys.tenant_status("acme", "cancelled")) == {old[15]}
    assert await index(redis, keys.tenant_status("acme", "queued")) == set(old[16:]) | set(live)
    later = await retention.trim(NOW + 2001 + TTL_S * 1000)
    assert later.jobs == 1
    # A job created long ago that is still live stays, however old.
    await retention.trim(NOW + 365 * DAY_MS)
    assert await index(redis, keys.tenant_jobs("acme")) == set(old[16:]) | set(live)


async def test_trim_drops_index_entries_whose_record_expired(redis_url: str, redis: Redis):
    settings = retention_settings(redis_url)
    ledger = Ledger.for_settings(redis, settings)
    jobs = await enqueue(ledger, [new_job(NOW + i, feature="gone") for i in range(10)])
    await ledger.finish([done(j) for j in jobs], NOW + 10)
    await redis.delete(*[keys.job(j) for j in jobs])  # what their TTL does
    assert await redis.exists(*[keys.result(j) for j in jobs]) == 10
    report = await Retention(redis, settings).trim(NOW + 11 + TTL_S * 1000)
    assert report.index_entries == 10 * 3  # all jobs, succeeded, feature "gone"
    assert await redis.exists(*[keys.result(j) for j in jobs]) == 0
    assert not await redis.exists(
        keys.tenant_jobs("acme"),
        keys.tenant_status("acme", "succeeded"),
        keys.tenant_feature("acme", "gone"),
        keys.tenant_features("acme"),
    )


async def test_trim_deletes_ended_deliveries_and_bounds_dead_letters(redis_url: str, redis: Redis):
    settings = retention_settings(redis_url, dead_letter_max=3, dead_letter_ttl_s=2 * TTL_S)
    ledger = Ledger.for_settings(redis, settings)
    jobs = await enqueue(
        ledger, [new_job(NOW + i, callback_url="https://hooks.example/x") for i in range(10)]
    )
    await ledger.finish([done(j) for j in jobs], NOW)
    deliveries = [f"wh_{j}" for j in jobs]
    # Two delivered, six dead (at increasing times), two still pending.
    for did in deliveries[:2]:
        await redis.hset(keys.webhook_delivery(did), "status", "delivered")
        await redis.zrem(keys.WEBHOOKS_DUE, did)
    for n, did in enumerate(deliveries[2:8]):
        await redis.hset(keys.webhook_delivery(did), "status", "dead")
        await redis.zrem(keys.WEBHOOKS_DUE, did)
        await redis.zadd(keys.WEBHOOKS_DEAD, {did: NOW + n})
    report = await Retention(redis, settings).trim(NOW + 10)  # before any retention: only the cap
    assert report.dead_letters == 3
    assert await index(redis, keys.WEBHOOKS_DEAD) == set(deliveries[5:8])
    assert not await redis.exists(*[keys.webhook_delivery(d) for d in deliveries[2:5]])
    assert await index(redis, keys.tenant_deliveries("acme")) == set(deliveries) - set(deliveries[2:5])
    report = await Retention(redis, settings).trim(NOW + 1 + TTL_S * 1000)
    assert report.deliveries == 2  # delivered; dead letters wait for their own, longer age limit
    assert await index(redis, keys.tenant_deliveries("acme")) == set(deliveries[5:])
    report = await Retention(redis, settings).trim(NOW + 6 + 2 * TTL_S * 1000)
    assert report.dead_letters == 3
    assert await index(redis, keys.tenant_deliveries("acme")) == set(deliveries[8:])
    assert await index(redis, keys.WEBHOOKS_DUE) == set(deliveries[8:])
    assert await redis.zcard(keys.WEBHOOKS_DEAD) == 0


async def test_trim_deletes_batches_that_ended_before_retention(redis_url: str, redis: Redis):
    settings = retention_settings(redis_url)
    ledger, batches = Ledger.for_settings(redis, settings), Batches(redis)
    await enqueue(ledger, [new_job(NOW + i) for i in range(4)])
    await redis.set(keys.LEADER_FENCE, "1")
    lane = effective(settings, "openai", "gpt-4o-mini", ENDPOINT)
    ended, running = ids.batch_id(NOW), ids.batch_id(NOW)
    lane_two = dataclasses.replace(lane, max_batch_requests=2)
    assert await batches.reserve(lane_two, ended, token=1, now_ms=NOW, chunk=10) == 2
    assert await batches.reserve(lane_two, running, token=1, now_ms=NOW, chunk=10) == 2
    for bid, provider_id in ((ended, "batch_p1"), (running, "batch_p2")):
        await redis.hset(keys.batch(bid), mapping={"provider_batch_id": provider_id})
        await redis.hset(keys.provider_batches("openai"), provider_id, bid)
    await redis.set(keys.batch_cursor(ended), 2)
    assert (await batches.update(ended, ("planned",), now_ms=NOW + 5, to_state="ingested")).status == "ok"
    report = await Retention(redis, settings).trim(NOW + 6 + TTL_S * 1000)
    assert report.batches == 1
    assert not await redis.exists(keys.batch(ended), keys.batch_jobs(ended), keys.batch_cursor(ended))
    assert await redis.hgetall(keys.provider_batches("openai")) == {b"batch_p2": running.encode()}
    assert await redis.exists(keys.batch(running), keys.batch_jobs(running)) == 2
    assert await redis.zcard(keys.BATCHES_ENDED) == 0


async def test_the_scheduler_trims_when_it_starts_leading_then_every_reconcile_interval(
    redis_url: str, redis: Redis
):
    from scheduler.ledger.tasks import create_pool
    from scheduler.service import build_scheduler

    settings = retention_settings(redis_url)
    ledger = Ledger.for_settings(redis, settings)
    [first, second] = await enqueue(ledger, [new_job(NOW), new_job(NOW + 1)])
    await ledger.finish([done(first), done(second)], NOW)
    pool = await create_pool(redis_url)
    try:
        async with build_scheduler(settings, redis, pool) as scheduler:
            start = (NOW + TTL_S * 1000 + 2) / 1000
            assert (await scheduler.tick(start)).steps["retention"] == 2
            await enqueue(ledger, [job := new_job(NOW + 2)])
            await ledger.finish([done(job.id)], NOW)
            assert "retention" not in (await scheduler.tick(start + 1)).steps
            later = start + settings.scheduler.reconcile_interval_s
            assert (await scheduler.tick(later)).steps["retention"] == 1
    finally:
        await pool.aclose()


async def test_the_api_reads_and_lists_jobs_without_their_bodies(settings: Settings, redis: Redis):
    from tests.api.harness import asgi_client

    job = {
        "provider": "openai",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
    }
    async with asgi_client(settings, redis) as api:
        job_id = (await api.post("/v1/jobs", json=job)).json()["id"]
        await redis.config_resetstat()
        read = await api.get(f"/v1/jobs/{job_id}")
        listed = await api.get("/v1/jobs", params={"status": "queued"})
        cancelled = await api.post(f"/v1/jobs/{job_id}/cancel")
    stats = await redis.info("commandstats")
    assert read.json()["id"] == job_id
    assert [j["id"] for j in listed.json()["data"]] == [job_id]
    assert cancelled.json()["status"] == "cancelled"
    assert "cmdstat_hgetall" not in stats


async def test_trim_reaches_tenants_no_longer_configured_and_then_forgets_them(redis_url: str, redis: Redis):
    settings = retention_settings(redis_url)
    ledger = Ledger.for_settings(redis, settings)
    [gone] = await enqueue(ledger, [new_job(tenant="departed", feature="x")])
    assert "departed" not in settings.tenants
    assert await redis.smembers(keys.TENANTS_INDEXED) == {b"departed"}
    await ledger.finish([done(gone)], NOW)
    report = await Retention(redis, settings).trim(NOW + 1 + TTL_S * 1000)
    assert report.jobs == 1
    # Only the tenant's recent-lanes set (the lane cap's window) is left, and it expires by itself.
    left = [k async for k in redis.scan_iter(match="bs:tenant*")]
    assert left == [keys.tenant_lanes("departed").encode()]
    assert await redis.pttl(left[0]) > 0
