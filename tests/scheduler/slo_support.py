"""Helpers shared by the SLO tracker's tests: jobs in a lane, a real reserved and submitted batch."""

from __future__ import annotations

from redis.asyncio import Redis

from config.settings import Settings
from scheduler.ledger import ids
from scheduler.ledger.jobs import NewJob
from scheduler.ledger.leader import Leader
from scheduler.ledger.ledger import Ledger
from scheduler.planning.batches import Batches
from scheduler.planning.lanes import effective

PROVIDER, MODEL, ENDPOINT = "openai", "gpt-4o-mini", "/v1/chat/completions"
LANE = f"{PROVIDER}:{MODEL}:{ENDPOINT}"


def new_job(now_ms: int, deadline_s: float, tenant: str = "acme") -> NewJob:
    body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
    return NewJob(
        id=ids.job_id(now_ms),
        tenant=tenant,
        provider=PROVIDER,
        endpoint=ENDPOINT,
        model=MODEL,
        body=body,
        deadline_ms=now_ms + int(deadline_s * 1000),
        created_ms=now_ms,
    )


async def enqueue(ledger: Ledger, now_ms: int, deadlines_s: list[float], tenant: str = "acme") -> list[str]:
    jobs = [new_job(now_ms, d, tenant) for d in deadlines_s]
    outcomes = await ledger.enqueue_many(jobs)
    return [o.job_id for o in outcomes]


async def submitted_batch(redis: Redis, settings: Settings, now_ms: int) -> str:
    """Reserve everything queued in the lane into a batch and record it as submitted at ``now_ms``."""
    token = await Leader(redis, holder="test", ttl_s=30).ensure()
    assert token is not None
    batches = Batches(redis)
    batch_id = ids.batch_id(now_ms)
    lane = effective(settings, PROVIDER, MODEL, ENDPOINT)
    assert await batches.reserve(lane, batch_id, token=token, now_ms=now_ms, chunk=1000) > 0
    status = await batches.mark_submitted(
        batch_id, PROVIDER, f"batch_{batch_id}", now_ms=now_ms, poll_s=60, how="created"
    )
    assert status == "ok"
    return batch_id


async def lead(redis: Redis, holder: str = "test") -> int:
    """A current leader fencing token, as a tick holds one (for calling leader steps directly)."""
    token = await Leader(redis, holder=holder, ttl_s=30).ensure()
    assert token is not None
    return token
