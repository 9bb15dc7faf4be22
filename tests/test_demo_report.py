"""The demo report's oracle: what a clairvoyant flip policy would have paid on the same run."""

from __future__ import annotations

import pytest

from batchshift.demo_report import oracle_actual_usd
from scheduler.ledger import keys

DEADLINE = 1_800_000_100_000


async def test_only_flips_out_of_a_batch_that_made_the_deadline_were_needless(redis):
    await redis.hset(keys.batch("on_time"), mapping={"ended_ms": DEADLINE - 1, "status": "completed"})
    await redis.hset(keys.batch("late"), mapping={"ended_ms": DEADLINE + 1, "status": "completed"})
    await redis.hset(keys.batch("ours"), mapping={"ended_ms": DEADLINE - 1, "status": "cancelled"})
    for job, batch in (("a", "on_time"), ("b", "late"), ("c", "ours")):
        await redis.hset(keys.job(job), mapping={"flipped_ms": DEADLINE - 50_000, "batch_id": batch})
    await redis.hset(keys.job("d"), mapping={"batch_id": ""})  # sent to sync at enqueue
    flipped = [(j, DEADLINE, 1.0) for j in "abcd"]
    actual, needless = await oracle_actual_usd(redis, flipped, 10.0)
    assert needless == 1
    assert actual == pytest.approx(9.0)


async def test_nothing_by_sync_costs_the_same(redis):
    assert await oracle_actual_usd(redis, [], 3.5) == (3.5, 0)
