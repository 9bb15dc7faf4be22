"""The chunked enqueue.lua against the single-job script it replaced (enqueue_single_reference.lua),
on random job sequences: every outcome and the whole Redis state must be the same, chunk size aside."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from scheduler.ledger import ids, keys, scripts
from scheduler.ledger.jobs import NewJob
from scheduler.ledger.ledger import Ledger, day_of
from tests.scheduler.test_enqueue_chunk import dump

REFERENCE = scripts.compose((Path(__file__).parent / "enqueue_single_reference.lua").read_text())
NOW = 1_800_000_000_000


def reference_call(ledger: Ledger, job: NewJob) -> tuple[list[str], list[Any]]:
    """The single-job script's KEYS and ARGV for ``job``, as the ledger built them."""
    month = day_of(job.created_ms)[:7]
    feature = job.tags.get("feature")
    call_keys = [
        keys.job(job.id),
        keys.SYNC_QUEUE if job.state == "sync" else keys.lane_queue(job.lane),
        keys.lane_arrivals(job.lane),
        keys.lane_bytes(job.lane),
        keys.lane_meta(job.lane),
        keys.LANES,
        keys.idempotency(job.tenant, job.idempotency_key) if job.idempotency_key else "",
        keys.tenant_jobs(job.tenant),
        keys.WAKEUP,
        keys.tenant_status(job.tenant, job.state),
        keys.tenant_feature(job.tenant, feature) if feature else "",
        keys.tenant_features(job.tenant),
        keys.TENANTS_INDEXED,
        keys.tenant_lanes(job.tenant),
        keys.LANES_ACTIVE,
        keys.budget_spend(job.tenant, month),
        keys.budget_committed(job.tenant, month),
        keys.dedup_group(job.tenant, job.dedup_digest) if job.dedup_digest else "",
    ]
    args: list[Any] = [
        job.id, job.request_hash, ledger.idempotency_ttl_s, job.deadline_ms, job.created_ms, len(job.body),
        job.lane, job.provider, job.model, job.endpoint, job.state,
        "" if ledger.max_lanes_per_tenant is None else ledger.max_lanes_per_tenant, ledger.lane_idle_ms,
        "" if job.envelope_usd is None else repr(job.envelope_usd), repr(job.reserve_usd),
        job.dedup_window_ms, job.dedup_max_followers,
    ]  # fmt: skip
    for name, value in job.fields().items():
        args.extend((name, value))
    return call_keys, args


def random_jobs(rng: random.Random) -> list[NewJob]:
    """Jobs whose outcomes hang on the ones before: shared idempotency keys, lanes past a cap, budgets,
    dedup groups, sync jobs, features, client batches, trace context; clocks that step back too."""
    jobs, now = [], NOW
    for i in range(rng.randrange(1, 60)):
        now += rng.choice([0, 0, 0, 1, 7, 1000, 400_000, -3, -700])
        kw: dict[str, Any] = {}
        if rng.random() < 0.3:
            kw.update(idempotency_key=f"k{rng.randrange(5)}", request_hash=f"h{rng.randrange(2)}")
        if rng.random() < 0.3:
            kw.update(envelope_usd=rng.choice([1.0, 2.0]))
        if rng.random() < 0.5:
            kw.update(reserve_usd=rng.choice([0.0, 0.3, 0.5]))
        if rng.random() < 0.3:
            kw.update(
                dedup_digest=f"d{rng.randrange(3)}",
                dedup_window_ms=rng.choice([60_000, 900_000]),
                dedup_max_followers=rng.choice([1, 3]),
                dedup_cost="split",
            )
        if rng.random() < 0.2:
            kw.update(state="sync")
        if rng.random() < 0.3:
            kw.update(tags={"feature": rng.choice(["f1", "f2"]), "x": "y"})
        if rng.random() < 0.1:
            kw.update(client_batch="cb", custom_id=f"c{i}")
        if rng.random() < 0.1:
            kw.update(traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01")
        model = rng.choice(["m1", "m2", "m3", "m4"])
        jobs.append(
            NewJob(
                id=ids.job_id(now),
                tenant=rng.choice(["a", "b", "c"]),
                provider="openai",
                endpoint="/v1/chat/completions",
                model=model,
                body=f'{{"model":"{model}","n":{i}}}'.encode(),
                deadline_ms=now + rng.choice([30_000, 60_000, 3_600_000]),
                created_ms=now,
                **kw,
            )  # fmt: skip
        )
    return jobs


@pytest.mark.parametrize("seed", range(40))
async def test_chunks_end_as_the_single_job_script_left_things(redis: Redis, seed: int):
    rng = random.Random(seed)
    ledger = Ledger(redis, max_lanes_per_tenant=rng.choice([None, 2, 3]), lane_idle_s=rng.choice([0.5, 600]))
    jobs = random_jobs(rng)
    single = redis.register_script(REFERENCE)
    expected = []
    for job in jobs:
        call_keys, args = reference_call(ledger, job)
        reply = await single(keys=call_keys, args=args)
        expected.append((reply[0].decode(), reply[1].decode(), reply[2].decode() if len(reply) > 2 else None))
    state = await dump(redis)
    await redis.flushdb()
    size = rng.choice([1, 3, 7, 1000])
    got = []
    for start in range(0, len(jobs), size):
        for outcome in await ledger.enqueue_chunk(jobs[start : start + size]):
            assert not isinstance(outcome, Exception)
            got.append((outcome.status, outcome.job_id, outcome.attached_to))
    assert got == expected
    assert await dump(redis) == state
