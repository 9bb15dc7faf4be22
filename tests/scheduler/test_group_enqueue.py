"""Single enqueues sent together as one enqueue.lua call (scheduler/ledger/group_enqueue.py): one round trip,
each job judged alone, each caller its own answer or error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from batchshift.embedded_redis import free_port
from scheduler.ledger import ids, keys
from scheduler.ledger.group_enqueue import GroupEnqueue
from scheduler.ledger.jobs import NewJob
from scheduler.ledger.ledger import Ledger

NOW = 1_800_000_000_000


def new_job(model: str = "m", idem: str | None = None, request_hash: str = "h1") -> NewJob:
    return NewJob(
        id=ids.job_id(NOW),
        tenant="acme",
        provider="openai",
        endpoint="/v1/chat/completions",
        model=model,
        body=b'{"model":"%s"}' % model.encode(),
        deadline_ms=NOW + 3_600_000,
        created_ms=NOW,
        idempotency_key=idem,
        request_hash=request_hash if idem else "",
    )


@pytest.fixture
async def group(redis: Redis) -> AsyncIterator[GroupEnqueue]:
    grouped = GroupEnqueue(Ledger(redis))
    yield grouped
    await grouped.close()


async def test_enqueues_made_together_go_as_one_group_each_answered_as_alone(
    redis: Redis, group: GroupEnqueue
):
    jobs = [new_job() for _ in range(20)]
    repeat, conflict = new_job(idem="k"), new_job(idem="k", request_hash="other")
    outcomes = await asyncio.gather(
        *(group.enqueue(job) for job in [*jobs, new_job(idem="k"), repeat, conflict])
    )
    assert (group.groups, group.grouped) == (1, 23)  # all were queued before the drain task first ran
    assert [o.status for o in outcomes[:21]] == ["created"] * 21
    assert [o.job_id for o in outcomes[:20]] == [job.id for job in jobs]
    assert (outcomes[21].status, outcomes[21].job_id) == ("existing", outcomes[20].job_id)
    assert outcomes[22].status == "conflict"
    assert await redis.zcard(keys.lane_queue(jobs[0].lane)) == 21
    assert await Ledger(redis).get(repeat.id) is None


async def test_enqueues_queued_during_a_round_trip_go_in_the_next_group(group: GroupEnqueue):
    first = asyncio.create_task(group.enqueue(new_job()))
    await asyncio.sleep(0)  # it has queued itself and started the drain, which runs before these five
    later = [asyncio.create_task(group.enqueue(new_job())) for _ in range(5)]
    outcomes = await asyncio.gather(first, *later)
    assert all(o.status == "created" for o in outcomes)
    assert (group.groups, group.grouped) == (2, 6)


async def test_scripts_lost_by_redis_are_loaded_again(redis: Redis, group: GroupEnqueue):
    await group.enqueue(new_job())
    await redis.script_flush()
    outcomes = await asyncio.gather(*(group.enqueue(new_job()) for _ in range(3)))
    assert [o.status for o in outcomes] == ["created"] * 3
    assert await redis.zcard(keys.lane_queue(new_job().lane)) == 4


async def test_an_error_reply_fails_only_its_own_caller(redis: Redis, group: GroupEnqueue):
    broken = new_job(model="broken")
    await redis.set(keys.lane_queue(broken.lane), "not a sorted set")  # its ZADD fails: WRONGTYPE
    fine = [new_job(), new_job()]
    results = await asyncio.gather(
        *(group.enqueue(job) for job in [fine[0], broken, fine[1]]), return_exceptions=True
    )
    assert group.groups == 1
    assert isinstance(results[1], ResponseError)
    assert [r.status for r in (results[0], results[2])] == ["created", "created"]  # type: ignore[union-attr]


async def test_a_connection_that_fails_fails_the_whole_group():
    client = Redis(port=free_port(), socket_connect_timeout=1)  # nothing listens there
    grouped = GroupEnqueue(Ledger(client))
    try:
        results = await asyncio.gather(
            *(grouped.enqueue(new_job()) for _ in range(3)), return_exceptions=True
        )
    finally:
        await client.aclose()
    assert all(isinstance(r, RedisConnectionError) for r in results)
    assert grouped.groups == 1
