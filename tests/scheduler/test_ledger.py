"""The job ledger against a real Redis: atomic enqueue, idempotency, guarded transitions."""

from __future__ import annotations

import asyncio
import random
import re

import orjson
import pytest
from redis.asyncio import Redis

from scheduler.errors import IllegalTransition, NotFound
from scheduler.ledger import ids, keys
from scheduler.ledger.jobs import NewJob
from scheduler.ledger.ledger import Finish, Ledger, Requeue, day_of

NOW = 1_800_000_000_000


def new_job(tenant: str = "acme", idem: str | None = None, body: bytes = b'{"model":"m"}', **kw) -> NewJob:
    return NewJob(
        id=ids.job_id(NOW),
        tenant=tenant,
        provider="openai",
        endpoint="/v1/chat/completions",
        model="m",
        body=body,
        deadline_ms=NOW + 3_600_000,
        created_ms=NOW,
        idempotency_key=idem,
        request_hash="h1",
        **kw,
    )


def test_ids_made_in_one_millisecond_sort_in_the_order_they_were_made():
    made = [ids.job_id(NOW) for _ in range(500)]
    assert made == sorted(made)
    assert len(set(made)) == 500


def test_id_parts_are_base32_digits_most_significant_first():
    for value, width in [(0, 10), (31, 1), (32, 2), (1_800_000_000_000, 10), ((1 << 80) - 1, 16), (12345, 3)]:
        digits, rest = [], value
        for _ in range(width):
            rest, digit = divmod(rest, 32)
            digits.append("0123456789ABCDEFGHJKMNPQRSTVWXYZ"[digit])
        assert ids._encode(value, width) == "".join(reversed(digits))


def test_id_encoding_equals_the_digit_by_digit_one_on_random_values():
    """ids._encode (two digits a step) against the encoding ids had before, digit by digit."""
    rng = random.Random(7)
    for _ in range(5000):
        width = rng.choice([1, 2, 3, 10, 16])
        value = rng.getrandbits(rng.choice([5 * width, 5 * width + 7, 64]))
        digits, rest = [], value
        for _ in range(width):
            rest, digit = divmod(rest, 32)
            digits.append("0123456789ABCDEFGHJKMNPQRSTVWXYZ"[digit])
        assert ids._encode(value, width) == "".join(reversed(digits))


def test_ids_across_milliseconds_keep_their_length_and_sort_by_time_then_order_made():
    """The millisecond's text is reused within a millisecond only: a new one (later or, after a clock
    step back, earlier) is encoded afresh."""
    made = [(ms, ids.job_id(ms)) for ms in (NOW, NOW, NOW + 1, NOW + 1, NOW - 5, NOW + 2**20, NOW + 2**20)]
    for ms, made_id in made:
        assert made_id.startswith(ids.floor_id("job", ms))
        assert len(made_id) == len("job_") + 26
    ordered = sorted(made, key=lambda pair: pair[0])
    assert sorted(made_id for _, made_id in made) == [made_id for _, made_id in ordered]


def test_ids_are_sortable_unique_and_valid_custom_ids():
    made = [ids.job_id(NOW + i) for i in range(200)]
    assert made == sorted(made)
    assert len(set(made)) == 200
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", i) for i in made)


async def test_enqueue_stores_record_queue_and_bytes(redis: Redis):
    ledger = Ledger(redis)
    job = new_job(tags={"feature": "summaries"})
    outcome = await ledger.enqueue(job)
    assert outcome.status == "created"
    record = await ledger.get(job.id)
    assert record is not None
    assert record.state == "queued"
    assert record.tags == {"feature": "summaries"}
    assert await redis.zscore(keys.lane_queue(job.lane), job.id) == job.deadline_ms
    assert int(await redis.get(keys.lane_bytes(job.lane))) == len(job.body)
    assert await redis.sismember(keys.LANES, job.lane)


async def test_same_idempotency_key_returns_the_same_job(redis: Redis):
    ledger = Ledger(redis)
    first = await ledger.enqueue(new_job(idem="k1"))
    second = await ledger.enqueue(new_job(idem="k1"))
    assert second.status == "existing"
    assert second.job_id == first.job_id
    assert await redis.zcard(keys.lane_queue(new_job().lane)) == 1


async def test_fifty_concurrent_enqueues_with_one_key_make_one_job(redis: Redis):
    ledger = Ledger(redis)
    outcomes = await asyncio.gather(*(ledger.enqueue(new_job(idem="same")) for _ in range(50)))
    assert len({o.job_id for o in outcomes}) == 1
    assert sum(o.status == "created" for o in outcomes) == 1
    assert len(await redis.keys(keys.job("*"))) == 1


async def test_idempotency_key_with_other_request_conflicts_and_stores_nothing(redis: Redis):
    ledger = Ledger(redis)
    await ledger.enqueue(new_job(idem="k"))
    other = new_job(idem="k")
    other.request_hash = "h2"
    outcome = await ledger.enqueue(other)
    assert outcome.status == "conflict"
    assert await ledger.get(other.id) is None


async def test_idempotency_keys_are_per_tenant(redis: Redis):
    ledger = Ledger(redis)
    a = await ledger.enqueue(new_job(tenant="acme", idem="k"))
    b = await ledger.enqueue(new_job(tenant="globex", idem="k"))
    assert a.job_id != b.job_id
    assert b.status == "created"


async def test_transition_from_a_state_not_listed_changes_nothing(redis: Redis):
    ledger = Ledger(redis)
    job = new_job()
    await ledger.enqueue(job)
    refused = await ledger.transition(job.id, ["batched"], "succeeded")
    assert (refused.status, refused.prior) == ("refused", "queued")
    assert (await ledger.get(job.id)).state == "queued"  # type: ignore[union-attr]
    missing = await ledger.transition("job_nope", ["queued"], "batched")
    assert missing.status == "missing"


async def test_cancel_takes_a_queued_job_out_of_its_lane_and_refuses_twice(redis: Redis):
    ledger = Ledger(redis)
    job = new_job()
    await ledger.enqueue(job)
    await ledger.cancel(job.id, NOW + 5)
    assert (await ledger.get(job.id)).state == "cancelled"  # type: ignore[union-attr]
    assert await redis.zcard(keys.lane_queue(job.lane)) == 0
    assert int(await redis.get(keys.lane_bytes(job.lane))) == 0
    with pytest.raises(IllegalTransition):
        await ledger.cancel(job.id, NOW + 6)
    with pytest.raises(NotFound):
        await ledger.cancel("job_missing", NOW)


async def test_finish_applies_only_to_the_batch_that_holds_the_job(redis: Redis):
    ledger = Ledger(redis)
    job = new_job(callback_url="https://example.com/hook")
    await ledger.enqueue(job)
    await redis.zrem(keys.lane_queue(job.lane), job.id)
    await ledger.transition(job.id, ["queued"], "batched", batch_id="bat_1")
    stale = Finish(
        id=job.id, state="succeeded", route="batch", batch_id="bat_other", billed=True, actual_usd=0.5
    )
    assert await ledger.finish([stale], NOW + 10) == ["skip:batched"]
    done = Finish(
        id=job.id,
        state="succeeded",
        route="batch",
        batch_id="bat_1",
        result=b'{"ok":true}',
        usage={"prompt_tokens": 3},
        input_tokens=3,
        actual_usd=0.25,
        sync_usd=0.5,
        billed=True,
    )
    assert await ledger.finish([done], NOW + 20) == ["ok"]
    assert await ledger.finish([done], NOW + 30) == ["skip:succeeded"]
    record = await ledger.get(job.id)
    assert record is not None
    assert record.state == "succeeded"
    assert orjson.loads(await ledger.result(job.id) or b"null") == {"ok": True}
    day = "2027-01-15"
    total = await redis.hgetall(keys.agg_total(day, "acme"))
    assert float(total[b"actual_usd"]) == pytest.approx(0.25)
    assert float(total[b"duplicate_usd"]) == pytest.approx(0.75)  # the stale line (0.5) and the replay (0.25)
    assert int(total[b"jobs"]) == 1
    assert await redis.zscore(keys.WEBHOOKS_DUE, f"wh_{job.id}") is not None


async def test_requeue_returns_a_batched_job_to_its_lane_once(redis: Redis):
    ledger = Ledger(redis)
    job = new_job()
    await ledger.enqueue(job)
    await redis.zrem(keys.lane_queue(job.lane), job.id)
    await redis.decrby(keys.lane_bytes(job.lane), len(job.body))
    await ledger.transition(job.id, ["queued"], "batched", batch_id="bat_1")
    back = Requeue(id=job.id, target="lane", batch_id="bat_1")
    assert await ledger.requeue([back], NOW) == ["ok"]
    assert await ledger.requeue([back], NOW) == ["skip:queued"]
    record = await ledger.get(job.id)
    assert record is not None
    assert (record.state, record.attempts, record.batch_id) == ("queued", 1, None)
    assert int(await redis.get(keys.lane_bytes(job.lane))) == len(job.body)
    flip = Requeue(id=job.id, target="sync", from_states=("queued", "batched"), attempt=False)
    assert await ledger.requeue([flip], NOW) == ["ok"]
    assert await redis.zcard(keys.lane_queue(job.lane)) == 0
    assert await redis.zscore(keys.SYNC_QUEUE, job.id) == job.deadline_ms


@pytest.mark.parametrize(
    ("ms", "day"),
    [
        (0, "1970-01-01"),
        (86_399_999, "1970-01-01"),
        (86_400_000, "1970-01-02"),
        (-1, "1969-12-31"),
        (1_709_164_800_000, "2024-02-29"),  # a leap day's first millisecond
        (1_735_689_599_999, "2024-12-31"),  # the last of a year
    ],
)
def test_the_day_of_a_millisecond_is_its_utc_day(ms: int, day: str) -> None:
    assert day_of(ms) == day


def test_day_of_names_the_utc_day_at_every_boundary():
    from datetime import UTC, datetime

    from scheduler.ledger.ledger import day_of

    for ms in (0, 1, 86_399_999, 86_400_000, -1, -86_400_001, NOW, NOW + 86_400_000 * 400 + 123):
        assert day_of(ms) == datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d")
    assert day_of(1_800_000_000_000) == "2027-01-15"
