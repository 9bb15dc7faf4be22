"""A batch's caps as the reservation scripts apply them (scheduler/ledger/lua/lib/reserve.lua, shared by
reserve_batch.lua and reserve_jobs.lua): the request and byte caps, counted on from what the batch
already holds, a lone job larger than the byte cap going alone, and the reply's ``full`` flag."""

from __future__ import annotations

import pytest

from config.settings import LaneSettings, ProviderSettings, Settings
from scheduler.ledger import ids, keys, scripts
from scheduler.ledger.jobs import NewJob
from scheduler.ledger.ledger import Ledger
from scheduler.planning.batches import Batches, _reserve_keys
from scheduler.planning.lanes import LINE_OVERHEAD_BYTES, Lane, effective

CHAT = "/v1/chat/completions"
MODEL = "gpt-4.1-mini"
BODY = b'{"model":"gpt-4.1-mini","messages":[]}'
LINE = len(BODY) + LINE_OVERHEAD_BYTES  # what one job counts against the byte cap


def job(deadline_ms: int, body: bytes = BODY) -> NewJob:
    return NewJob(
        id=ids.job_id(),
        tenant="acme",
        provider="openai",
        endpoint=CHAT,
        model=MODEL,
        body=body,
        deadline_ms=deadline_ms,
        created_ms=0,
    )


def lane_for(redis_url: str, **caps: int) -> Lane:
    settings = Settings(
        redis_url=redis_url,
        providers={"openai": ProviderSettings(kind="openai", base_url="http://127.0.0.1:9/v1")},
        lanes={f"openai:{MODEL}:{CHAT}": LaneSettings(**caps)},
    )
    return effective(settings, "openai", MODEL, CHAT)


async def queued(redis, count: int, body: bytes = BODY) -> list[NewJob]:
    jobs = [job(1_000 + n, body) for n in range(count)]
    await Ledger(redis).enqueue_many(jobs)
    await redis.set(keys.LEADER_FENCE, "1")
    return jobs


async def members(redis, batch_id: str) -> set[str]:
    return {m.decode() for m in await redis.smembers(keys.batch_jobs(batch_id))}


async def calls_of_two(redis, script: str, lane: Lane, jobs: list[NewJob], calls: int) -> list[list[int]]:
    """``calls`` calls of ``script`` into batch bat_1, two jobs each (reserve_batch: the next two in
    deadline order; reserve_jobs: the next two of ``jobs``); each reply's figures: taken, bytes, full."""
    reserve = scripts.load(redis, script)
    common = [1, "bat_1", lane.max_batch_requests, lane.max_batch_bytes]
    tail = [0, lane.name, lane.provider, lane.model, lane.endpoint]
    replies = []
    for n in range(calls):
        if script == "reserve_batch":
            args = [*common, 2, LINE_OVERHEAD_BYTES, *tail, 2**62]
        else:
            args = [*common, LINE_OVERHEAD_BYTES, *tail, *(j.id for j in jobs[2 * n : 2 * n + 2])]
        reply = await reserve(keys=_reserve_keys(lane.name, "bat_1"), args=args)
        replies.append([int(v) for v in reply[1:]])
    return replies


async def test_the_byte_cap_closes_the_batch_in_deadline_order(redis, redis_url) -> None:
    lane = lane_for(redis_url, max_batch_bytes=2 * LINE + LINE // 2)
    jobs = await queued(redis, 5)
    taken = await Batches(redis).reserve(lane, "bat_1", token=1, now_ms=0, chunk=1)
    assert taken == 2
    assert await members(redis, "bat_1") == {jobs[0].id, jobs[1].id}
    record = await redis.hgetall(keys.batch("bat_1"))
    assert (record[b"requests"], record[b"bytes"]) == (b"2", str(2 * LINE).encode())
    assert await redis.zcard(keys.lane_queue(lane.name)) == 3


async def test_a_lone_job_larger_than_the_byte_cap_goes_alone(redis, redis_url) -> None:
    lane = lane_for(redis_url, max_batch_bytes=LINE - 1)
    jobs = await queued(redis, 2)
    assert await Batches(redis).reserve(lane, "bat_1", token=1, now_ms=0, chunk=10) == 1
    assert await members(redis, "bat_1") == {jobs[0].id}


@pytest.mark.parametrize("script", ["reserve_batch", "reserve_jobs"])
async def test_a_call_that_reaches_the_request_cap_says_the_batch_is_full(redis, redis_url, script) -> None:
    """Calls of two jobs each into a batch of four: the second call fills it and says so (the caller
    stops there); a third takes nothing and says so too."""
    lane = lane_for(redis_url, max_batch_requests=4)
    jobs = await queued(redis, 6)
    replies = await calls_of_two(redis, script, lane, jobs, 3)
    assert replies == [[2, 2 * len(BODY), 0], [2, 2 * len(BODY), 1], [0, 0, 1]]
    assert await members(redis, "bat_1") == {j.id for j in jobs[:4]}
    assert (await redis.hgetall(keys.batch("bat_1")))[b"requests"] == b"4"


@pytest.mark.parametrize("script", ["reserve_batch", "reserve_jobs"])
async def test_the_caps_count_what_the_batch_already_holds(redis, redis_url, script) -> None:
    """A second call into the same batch (the scheduler reserves in chunks) counts the first's jobs
    and bytes: with room for three lines, it takes one more and says the batch is full."""
    lane = lane_for(redis_url, max_batch_requests=10, max_batch_bytes=3 * LINE)
    jobs = await queued(redis, 5)
    replies = await calls_of_two(redis, script, lane, jobs, 2)
    assert replies == [[2, 2 * len(BODY), 0], [1, len(BODY), 1]]
    assert await members(redis, "bat_1") == {j.id for j in jobs[:3]}
    record = await redis.hgetall(keys.batch("bat_1"))
    assert (record[b"requests"], record[b"bytes"]) == (b"3", str(3 * LINE).encode())


@pytest.mark.parametrize("script", ["reserve_batch", "reserve_jobs"])
async def test_a_stale_queue_entry_is_dropped_not_moved(redis, redis_url, script) -> None:
    """A lane queue entry whose job is no longer queued (cancelled, here) leaves the lane's indexes;
    the job itself is not touched and the next queued job is taken."""
    lane = lane_for(redis_url)
    jobs = await queued(redis, 3)
    await redis.hset(keys.job(jobs[0].id), "state", "cancelled")
    replies = await calls_of_two(redis, script, lane, jobs, 1)
    assert replies == [[1, len(BODY), 0]]
    assert await members(redis, "bat_1") == {jobs[1].id}
    assert await redis.zscore(keys.lane_queue(lane.name), jobs[0].id) is None
    assert await redis.zscore(keys.lane_arrivals(lane.name), jobs[0].id) is None
    assert await redis.hget(keys.job(jobs[0].id), "state") == b"cancelled"
    assert await redis.zscore(keys.lane_queue(lane.name), jobs[2].id) is not None
