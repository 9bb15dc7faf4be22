"""Where a batch's unanswered jobs go: reads what :func:`scheduler.policy.route_retry` needs, applies it.

Ingestion (a retriable line, a job with no line), a batch refused whole or abandoned
(:mod:`workers.tasks.refusals`) and the stranded-job sweep (:mod:`workers.tasks.sweep`) all send a
job that its batch did not answer through this one step: its attempts, deadline and tenant, the
lane's expected turnaround and the tenants barred from paid sync are read here, and the decision
is the policy's. The result is ledger changes (a guarded requeue to the lane or to sync, or a
guarded failure), each guarded by the job still being ``batched`` in the batch that holds it; the
caller applies them, in its own transaction where it has one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from config.settings import Settings
from scheduler import policy
from scheduler.costs import budgets
from scheduler.ledger import keys
from scheduler.ledger.ledger import Finish, Requeue
from scheduler.planning.batches import BatchRecord
from scheduler.slo import prediction
from scheduler.slo.health import read_health


@dataclass(slots=True)
class Routed:
    """The ledger changes for jobs a batch did not answer: requeues, and failures for tenants that
    may neither retry nor pay for sync."""

    requeues: list[Requeue] = field(default_factory=list)
    fails: list[Finish] = field(default_factory=list)


def blocked_error(error: dict[str, Any] | None) -> dict[str, Any]:
    """The failed job's error: why it could not go on, with the batch's own error as its cause."""
    return {**policy.SYNC_BLOCKED_ERROR, "cause": error} if error else dict(policy.SYNC_BLOCKED_ERROR)


async def route_back(
    settings: Settings,
    redis: Redis,
    batch: BatchRecord,
    ids: Sequence[str],
    errors: Sequence[dict[str, Any] | None],
    now_ms: int,
) -> Routed:
    """Where jobs of ``batch`` go that it did not answer, by :func:`scheduler.policy.route_retry`."""
    out = Routed()
    if not ids:
        return out
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(keys.job(job_id), ["attempts", "deadline_ms", "tenant"])
        rows = await pipe.execute()
    # Another batch attempt needs the lane's expected turnaround plus the sync margin (a lane
    # with no history: the margin alone, and the SLO tracker flips just in time if need be).
    health = await read_health(redis, settings, batch.lane, batch.provider, now_ms)
    outlook = policy.LaneOutlook(now_ms, prediction.expected_turnaround_s(health, settings))
    tenants = [(t or b"").decode() for _, _, t in rows]
    blocked = await budgets.sync_blocked(redis, settings, tenants, now_ms)
    for job_id, error, (attempts, deadline), tenant in zip(
        ids, errors, ((a, d) for a, d, _ in rows), tenants, strict=True
    ):
        job = policy.RetryJob(int(attempts or 0), int(deadline or 0))
        decision = policy.route_retry(
            job, outlook, tenant not in blocked, max_attempts=settings.scheduler.max_attempts
        )
        if decision.target == "fail":
            out.fails.append(
                Finish(job_id, "failed", "batch", batch_id=batch.owner_id, error=blocked_error(error))
            )
        else:
            out.requeues.append(Requeue(job_id, decision.target, batch_id=batch.owner_id, error=error))
    return out
