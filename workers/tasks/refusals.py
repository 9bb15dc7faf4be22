"""A batch refused as a whole: its jobs go back to their lane, or fail with the provider's reason.

A refusal is retriable (a token or rate limit, a server fault, a batch the provider lost) or
permanent (the input itself is wrong). Retriable: each job goes where
:func:`scheduler.policy.route_retry` says, the rule ingestion and the sweep use
(:mod:`workers.tasks.routing`): back to its lane with the attempt counted while attempts and the
deadline allow, else on to the sync lane; a tenant whose ``batch_only`` budget is spent never goes
to paid sync (back to the lane while attempts remain, else failed with a ``sync_blocked`` error).
Permanent: each job fails with the provider's reason. A token-limit
refusal also holds the lane back for ``scheduler.token_limit_backoff_s``: the provider's enqueued
token quota needs time to drain. Every job change is guarded by the batch that holds the job, so
running this twice changes nothing the second time.
"""

from __future__ import annotations

from typing import Any

import orjson
import structlog

from scheduler.ledger.ledger import Finish
from scheduler.planning.batches import Batches, BatchRecord
from workers.context import WorkerContext
from workers.tasks.routing import Routed, route_back

log = structlog.get_logger(__name__)

# OpenAI batch error codes that say "not now" rather than "never".
RETRIABLE_CODES = frozenset({"token_limit_exceeded", "rate_limit_exceeded", "server_error", "timeout"})
TOKEN_LIMIT_CODE = "token_limit_exceeded"  # noqa: S105 - an error code, not a secret


def reason_of(errors: list[dict[str, Any]], fallback: str) -> dict[str, Any]:
    """The refusal as a job error: the provider's first batch-level error, or ``fallback``."""
    first = errors[0] if errors else {}
    return {
        "type": "batch_refused",
        "code": str(first.get("code") or fallback),
        "message": str(first.get("message") or fallback),
    }


async def refuse(
    ctx: WorkerContext,
    batches: Batches,
    record: BatchRecord,
    reason: dict[str, Any],
    *,
    retriable: bool,
    now_ms: int,
) -> tuple[int, int]:
    """Send the batch's jobs back (retriable) or fail them (permanent); returns (requeued, failed)."""
    settings = ctx["settings"].scheduler
    ledger = ctx["ledger"]
    if reason.get("code") == TOKEN_LIMIT_CODE:
        await batches.hold_lane(record.lane, now_ms + int(settings.token_limit_backoff_s * 1000), now_ms)
    requeued = failed = 0
    if record.duplicate_of is None:  # a duplicate's jobs belong to the original batch
        async for chunk in batches.job_ids(record.id):
            waiting = [
                job.id
                for job in await ledger.get_many(chunk)
                if job is not None and job.state == "batched" and job.batch_id == record.id
            ]
            if retriable:
                routed = await route_back(
                    ctx["settings"], ctx["redis"], record, waiting, [reason] * len(waiting), now_ms
                )
            else:
                routed = Routed(
                    fails=[Finish(j, "failed", "batch", batch_id=record.id, error=reason) for j in waiting]
                )
            requeued += (await ledger.requeue(routed.requeues, now_ms)).count("ok")
            failed += (await ledger.finish(routed.fails, now_ms)).count("ok")
    await batches.update(
        record.id,
        ("planned", "submitted", "ended"),
        now_ms=now_ms,
        to_state="failed",
        error=orjson.dumps(reason),
        failed_ms=now_ms,
    )
    log.warning(
        "batch.refused",
        batch_id=record.id,
        lane=record.lane,
        code=reason.get("code"),
        retriable=retriable,
        requeued=requeued,
        failed=failed,
    )
    return requeued, failed
