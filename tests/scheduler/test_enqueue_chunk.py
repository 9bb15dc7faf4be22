"""enqueue.lua takes a chunk of jobs per call: each judged as if enqueued alone, one after another."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from scheduler.ledger import ids, keys
from scheduler.ledger.jobs import NewJob
from scheduler.ledger.ledger import EnqueueOutcome, Ledger, day_of

NOW = 1_800_000_000_000


def job(tenant: str = "acme", model: str = "m", **kw: Any) -> NewJob:
    fields: dict[str, Any] = {
        "id": ids.job_id(NOW),
        "tenant": tenant,
        "provider": "openai",
        "endpoint": "/v1/chat/completions",
        "model": model,
        "body": b'{"model":"' + model.encode() + b'"}',
        "deadline_ms": NOW + 3_600_000,
        "created_ms": NOW,
    }
    fields.update(kw)
    return NewJob(**fields)


def mixed_jobs() -> list[NewJob]:
    """Jobs whose outcomes depend on the ones before them: every rule enqueue judges by."""
    dedup = {"dedup_digest": "d1", "dedup_window_ms": 60_000, "dedup_max_followers": 1, "dedup_cost": "split"}
    budget = {"envelope_usd": 1.0, "reserve_usd": 0.4}
    return [
        job(idempotency_key="k1", request_hash="h1", tags={"feature": "summaries"}),
        job(idempotency_key="k1", request_hash="h1"),  # existing: the job just above
        job(idempotency_key="k1", request_hash="h2"),  # conflict
        job(model="m2", state="sync"),  # a second lane (cap 2), straight to sync
        job(model="m3"),  # a third lane: over the cap
        job(model="m2", traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01", tracestate="x=1"),
        job(tenant="beta", **budget),
        job(tenant="beta", **budget),
        job(tenant="beta", **budget),  # 1.2 of a 1.0 envelope: refused
        job(tenant="gamma", **dedup),  # leads its group
        job(tenant="gamma", **dedup),  # follows it
        job(tenant="gamma", **dedup),  # the group is full: leads a new one
        job(tenant="gamma", client_batch="cb1", custom_id="line-1", tags={"feature": "eval"}),
        job(tenant="acme", created_ms=NOW + 5, deadline_ms=NOW + 7_200_000),
    ]


async def dump(redis: Redis) -> dict[bytes, Any]:
    """Every key's type, content and whether it expires."""
    out: dict[bytes, Any] = {}
    for key in sorted(await redis.keys("*")):
        kind = (await redis.type(key)).decode()
        if kind == "string":
            value: Any = await redis.get(key)
        elif kind == "hash":
            value = await redis.hgetall(key)
        elif kind == "zset":
            value = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == "set":
            value = sorted(await redis.smembers(key))
        else:
            value = await redis.lrange(key, 0, -1)
        out[key] = (kind, value, await redis.pttl(key) > 0)
    return out


async def test_a_chunk_stores_and_answers_what_one_by_one_enqueues_do(redis: Redis):
    ledger = Ledger(redis, max_lanes_per_tenant=2)
    jobs = mixed_jobs()
    chunked = await ledger.enqueue_many(jobs)
    state = await dump(redis)
    await redis.flushdb()
    alone = [await ledger.enqueue(j) for j in jobs]
    assert chunked == alone
    assert state == await dump(redis)
    assert [o.status for o in chunked] == [
        "created", "existing", "conflict", "created", "lanes", "created",
        "created", "created", "budget", "created", "created", "created", "created", "created",
    ]  # fmt: skip
    assert chunked[10].attached_to == jobs[9].id
    assert chunked[11].attached_to is None


async def test_the_job_record_holds_the_new_jobs_fields(redis: Redis):
    jobs = mixed_jobs()
    await Ledger(redis).enqueue_many([jobs[0], jobs[5], jobs[12]])
    for j in (jobs[0], jobs[5], jobs[12]):
        expected = {k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in j.fields().items()}
        assert await redis.hgetall(keys.job(j.id)) == expected


async def test_a_job_that_meets_an_error_fails_alone_and_the_others_are_stored(redis: Redis):
    ledger = Ledger(redis)
    fine, broken, later = job(), job(model="broken"), job()
    await redis.set(keys.lane_queue(broken.lane), "not a sorted set")  # its queue write fails: WRONGTYPE
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await ledger.enqueue_many([fine, broken, later])
    outcomes = await ledger.enqueue_chunk([job(), job(model="broken")])
    assert [type(o).__name__ for o in outcomes] == ["EnqueueOutcome", "ResponseError"]
    assert await redis.zcard(keys.lane_queue(fine.lane)) == 3
    assert int(await redis.get(keys.lane_bytes(fine.lane))) == 3 * len(fine.body)


async def test_a_bulk_past_one_chunk_goes_in_several_calls_in_order(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr("scheduler.ledger.ledger.ENQUEUE_CHUNK", 3)
    ledger = Ledger(redis)
    jobs = [job(idempotency_key=f"k{i % 4}", request_hash="h") for i in range(10)]
    outcomes = await ledger.enqueue_many(jobs)
    assert [o.status for o in outcomes] == ["created"] * 4 + ["existing"] * 6
    assert [o.job_id for o in outcomes[4:]] == [jobs[i % 4].id for i in range(4, 10)]
    assert await redis.llen(keys.WAKEUP) == 4  # one wake-up per job created, as one by one


def _broken_cases() -> list[tuple[str, NewJob, list[tuple[str, str]]]]:
    """A job, and keys planted (key, kind) so that one of its writes meets the wrong type."""
    month = day_of(NOW)[:7]
    budget = {"envelope_usd": 5.0, "reserve_usd": 0.4}
    lane = job(model="broken").lane
    return [
        ("tenant lanes", job(tenant="delta"), [(keys.tenant_lanes("delta"), "string")]),
        (
            "budget",
            job(tenant="delta", reserve_usd=0.4),
            [(keys.budget_committed("delta", month), "nan-text")],
        ),
        ("budget envelope", job(tenant="delta", **budget), [(keys.budget_committed("delta", month), "hash")]),
        ("lane queue", job(tenant="delta", model="broken"), [(keys.lane_queue(lane), "string")]),
        ("lane bytes", job(tenant="delta", model="broken"), [(keys.lane_bytes(lane), "nan-text")]),
        ("lane meta", job(tenant="delta", model="broken"), [(keys.lane_meta(lane), "string")]),
        ("status index", job(tenant="delta"), [(keys.tenant_status("delta", "queued"), "string")]),
        (
            "feature index",
            job(tenant="delta", tags={"feature": "f"}),
            [(keys.tenant_feature("delta", "f"), "set")],
        ),
        ("sync queue", job(tenant="delta", state="sync"), [(keys.SYNC_QUEUE, "string")]),
    ]


def plain(outcomes: list[Any]) -> list[Any]:
    """Outcomes comparable by value (an error by its message)."""
    return [str(o) if isinstance(o, ResponseError) else o for o in outcomes]


async def plant(redis: Redis, planted: list[tuple[str, str]]) -> None:
    for key, kind in planted:
        if kind == "string":
            await redis.set(key, "planted")
        elif kind == "nan-text":
            await redis.set(key, "not a number")
        elif kind == "hash":
            await redis.hset(key, "planted", "1")
        else:
            await redis.sadd(key, "planted")


@pytest.mark.parametrize("case", range(len(_broken_cases())), ids=[c[0] for c in _broken_cases()])
async def test_a_job_meeting_a_key_of_the_wrong_type_writes_nothing_and_the_others_stand(
    redis: Redis, case: int
):
    """Whichever of its writes would fail, the job fails before its first one: no record, no index
    entry, no reservation, no idempotency key; the other jobs end as if it had never been sent."""
    _, broken, planted = _broken_cases()[case]
    broken.idempotency_key, broken.request_hash = "kb", "hb"
    ledger = Ledger(redis, max_lanes_per_tenant=2)
    jobs = mixed_jobs()
    await plant(redis, planted)
    outcomes = await ledger.enqueue_chunk([*jobs[:7], broken, *jobs[7:]])
    assert isinstance(outcomes[7], ResponseError)
    assert str(outcomes[7]).startswith(("WRONGTYPE", "ERR value is not"))
    state = await dump(redis)
    assert broken.id.encode() not in repr(state).encode()
    await redis.flushdb()
    await plant(redis, planted)
    alone = [(await ledger.enqueue_chunk([j]))[0] for j in jobs]
    assert plain(outcomes[:7] + outcomes[8:]) == plain(alone)
    assert state == await dump(redis)


async def test_a_follower_whose_leaders_followers_key_is_broken_fails_alone(redis: Redis):
    dedup = {"dedup_digest": "d9", "dedup_window_ms": 60_000, "dedup_max_followers": 5, "dedup_cost": "split"}
    ledger = Ledger(redis)
    leader = job(**dedup)
    await ledger.enqueue(leader)
    await redis.set(keys.dedup_followers(leader.id), "planted")
    follower, other = job(**dedup), job()
    outcomes = await ledger.enqueue_chunk([follower, other])
    assert isinstance(outcomes[0], ResponseError)
    assert str(outcomes[0]).startswith("WRONGTYPE")
    assert outcomes[1] == EnqueueOutcome("created", other.id)
    assert not await redis.exists(keys.job(follower.id))
    assert await redis.zrange(keys.tenant_jobs("acme"), 0, -1) == sorted(
        [leader.id.encode(), other.id.encode()]
    )


async def test_redis_out_of_memory_refuses_each_job_of_a_call_and_writes_nothing(redis: Redis):
    """A script call that begins over maxmemory is refused at its first write: every job of the chunk
    (none has written yet) fails with OOM, cleanly; a call begun under the limit stores all its jobs."""
    ledger = Ledger(redis, max_lanes_per_tenant=2)
    before = await ledger.enqueue_chunk(mixed_jobs()[:2])
    state = await dump(redis)
    await redis.config_set("maxmemory-policy", "noeviction")
    await redis.config_set("maxmemory", 1)
    try:
        refused = await ledger.enqueue_chunk(mixed_jobs())
    finally:
        await redis.config_set("maxmemory", 0)
    assert [o.status for o in before if isinstance(o, EnqueueOutcome)] == ["created", "existing"]
    # Answers that write nothing still come (an idempotency key's job); every job to store is refused.
    assert [str(o)[:4] if isinstance(o, ResponseError) else o.status for o in refused] == [
        "existing", "existing", "conflict", *["OOM "] * 11
    ]  # fmt: skip
    assert await dump(redis) == state


@pytest.mark.parametrize("length", [0, 3, 9, 10, 14])
async def test_the_wake_up_list_ends_as_one_push_per_job_trimmed_leaves_it(redis: Redis, length: int):
    for _ in range(length):
        await redis.lpush(keys.WAKEUP, "1")
    await Ledger(redis).enqueue_chunk([job(), job(), job()])
    assert await redis.lrange(keys.WAKEUP, 0, -1) == [b"1"] * min(length + 3, keys.WAKEUP_MAX)


async def test_a_wake_up_list_of_the_wrong_type_fails_no_job(redis: Redis):
    """The wake-up is a hint (the scheduler ticks on its own too): the jobs are stored all the same."""
    await redis.set(keys.WAKEUP, "planted")
    outcomes = await Ledger(redis).enqueue_chunk([first := job(), job()])
    assert [o.status for o in outcomes if isinstance(o, EnqueueOutcome)] == ["created", "created"]
    assert await redis.zcard(keys.lane_queue(first.lane)) == 2


async def test_lane_registration_written_once_matches_one_by_one_with_a_partial_meta(redis: Redis):
    """A lane's meta fields and registration are written only where missing: as HSETNX/SADD per job."""
    jobs = [job(), job(model="m2"), job()]

    async def planted() -> None:
        await redis.flushdb()
        await redis.hset(keys.lane_meta(jobs[0].lane), "model", "kept")
        await redis.sadd(keys.LANES, jobs[1].lane)
        await redis.sadd(keys.TENANTS_INDEXED, "someone")

    await planted()
    await Ledger(redis).enqueue_chunk(jobs)
    chunked = await dump(redis)
    await planted()
    for j in jobs:
        await Ledger(redis).enqueue(j)
    assert await dump(redis) == chunked
    assert await redis.hgetall(keys.lane_meta(jobs[0].lane)) == {
        b"model": b"kept",
        b"provider": b"openai",
        b"endpoint": b"/v1/chat/completions",
    }
    assert sorted(await redis.smembers(keys.LANES)) == sorted({jobs[0].lane.encode(), jobs[1].lane.encode()})


async def test_a_call_redis_answers_busy_is_that_error_for_each_job_of_its_chunk(
    redis: Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
):
    """Redis busy running another script answers BUSY without running ours: each job of the chunk
    gets that error (the API answers those items 503) and the outcomes of other chunks still come."""
    monkeypatch.setattr("scheduler.ledger.ledger.ENQUEUE_CHUNK", 2)
    ledger = Ledger(redis)
    await ledger.enqueue_chunk([job()])  # the script is loaded: its EVALSHA needs no reload
    await redis.config_set("busy-reply-threshold", 50)
    other = Redis.from_url(redis_url)
    spinning = asyncio.create_task(other.eval("while true do end", 0))  # no writes: SCRIPT KILL ends it
    try:
        await asyncio.sleep(0.2)
        outcomes = await ledger.enqueue_each([job(), job(), job()])
    finally:
        await redis.script_kill()
        with pytest.raises(ResponseError):
            await spinning
        await redis.config_set("busy-reply-threshold", 5000)
        await other.aclose()
    assert [str(o)[:5] for o in outcomes] == ["BUSY "] * 3
    assert await redis.zcard(keys.tenant_jobs("acme")) == 1
