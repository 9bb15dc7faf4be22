"""The stranded-job sweep: jobs left ``batched`` in a batch that will never move them again.

A job is ``batched`` only while its batch is live (planned, submitted, ended). Every step that
closes a batch (ingestion, a refusal, a cancellation) moves its jobs first, but a bug or a foreign
result file (say an adopted batch that was not ours, read as fully answered) can leave some
behind, and nothing would ever move them. Each closed batch lands in ``keys.BATCHES_CLOSED``
(``batch_update.lua``); the reconcile pass (``reconcile_batches``, every
``scheduler.reconcile_interval_s``) checks each once and sends any job still ``batched`` in it back
to its lane, or on to sync, with the same decision ingestion makes for an unanswered job
(:func:`workers.tasks.ingest.route_back`) and the same guarded requeue.
"""

from __future__ import annotations

import structlog

from scheduler import keys
from scheduler.batches import Batches
from workers.context import WorkerContext
from workers.tasks.ingest import route_back

log = structlog.get_logger(__name__)

SWEEP_BATCHES = 500  # closed batches checked per reconcile pass; the rest wait for the next one
STRANDED_ERROR = {"type": "no_result", "message": "the job's batch closed without a result for it"}


async def sweep_stranded(ctx: WorkerContext, now_ms: int) -> int:
    """Send every job still ``batched`` in a closed batch back to its lane or to sync; returns how many."""
    redis = ctx["redis"]
    batches = Batches(redis)
    moved = 0
    for raw in await redis.zrange(keys.BATCHES_CLOSED, 0, SWEEP_BATCHES - 1):
        batch_id = raw.decode()
        record = await batches.get(batch_id)
        if record is not None and record.duplicate_of is None:
            async for ids in batches.job_ids(batch_id):
                async with redis.pipeline(transaction=False) as pipe:
                    for job_id in ids:
                        pipe.hmget(keys.job(job_id), ["state", "batch_id"])
                    rows = await pipe.execute()
                stranded = [i for i, (s, b) in zip(ids, rows, strict=True) if s == b"batched" and b == raw]
                if not stranded:
                    continue
                requeues = await route_back(
                    ctx["settings"], redis, record, stranded, [STRANDED_ERROR] * len(stranded), now_ms
                )
                codes = await ctx["ledger"].requeue(requeues, now_ms)
                swept = codes.count("ok")
                moved += swept
                log.warning("batch.stranded_swept", batch_id=batch_id, state=record.state, jobs=swept)
        await redis.zrem(keys.BATCHES_CLOSED, batch_id)
    return moved
