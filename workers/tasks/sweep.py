"""The stranded-job sweep: jobs left ``batched`` in a batch that will never move them again.

A job is ``batched`` only while its batch is live (planned, submitted, ended). Every step that
closes a batch (ingestion, a refusal, a cancellation) moves its jobs first, but a bug or a foreign
result file (say an adopted batch that was not ours, read as fully answered) can leave some
behind, and nothing would ever move them. Each closed batch lands in ``keys.BATCHES_CLOSED``
(``batch_update.lua``); the reconcile pass (``reconcile_batches``, every
``scheduler.reconcile_interval_s``) checks each once and sends any job still ``batched`` in it back
to its lane, or on to sync, with the same decision ingestion makes for an unanswered job
(:func:`workers.tasks.routing.route_back`, :func:`scheduler.policy.route_retry`) and the same
guarded requeue (or failure, for a tenant barred from paid sync whose attempts are used up). A batch whose record is
missing altogether while it is still listed live (``keys.BATCHES_LIVE``) is swept the same way,
from its job set, and taken off the batch indexes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import structlog

from scheduler.ledger import keys
from scheduler.planning.batches import Batches, BatchRecord
from workers.context import WorkerContext
from workers.tasks.routing import route_back

log = structlog.get_logger(__name__)

SWEEP_BATCHES = 500  # closed batches checked per reconcile pass; the rest wait for the next one
STRANDED_ERROR = {"type": "no_result", "message": "the job's batch closed without a result for it"}


async def sweep_stranded(ctx: WorkerContext, now_ms: int) -> int:
    """Send every job still ``batched`` in a closed or missing batch back to its lane or to sync;
    returns how many."""
    redis = ctx["redis"]
    batches = Batches(redis)
    moved = 0
    for raw in await redis.zrange(keys.BATCHES_CLOSED, 0, SWEEP_BATCHES - 1):
        batch_id = raw.decode()
        record = await batches.get(batch_id)
        if record is not None and record.duplicate_of is None:
            moved += await _sweep_batch(ctx, record, now_ms)
        await redis.zrem(keys.BATCHES_CLOSED, batch_id)
    live = [m.decode() for m in await redis.zrange(keys.BATCHES_LIVE, 0, -1)]
    async with redis.pipeline(transaction=False) as pipe:
        for batch_id in live:
            pipe.exists(keys.batch(batch_id))
        present = await pipe.execute()
    for batch_id, exists in zip(live, present, strict=True):
        if not exists:
            moved += await _sweep_missing(ctx, batch_id, now_ms)
    return moved


async def _stranded_in(ctx: WorkerContext, batch_id: str) -> AsyncIterator[list[str]]:
    """The jobs still ``batched`` in ``batch_id``, a chunk at a time, from its job set."""
    redis = ctx["redis"]
    owner = batch_id.encode()
    async for ids in Batches(redis).job_ids(batch_id):
        async with redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(keys.job(job_id), ["state", "batch_id"])
            rows = await pipe.execute()
        stranded = [i for i, (s, b) in zip(ids, rows, strict=True) if s == b"batched" and b == owner]
        if stranded:
            yield stranded


async def _sweep_batch(ctx: WorkerContext, record: BatchRecord, now_ms: int) -> int:
    moved = 0
    async for stranded in _stranded_in(ctx, record.id):
        errors = [STRANDED_ERROR] * len(stranded)
        routed = await route_back(ctx["settings"], ctx["redis"], record, stranded, errors, now_ms)
        swept = (await ctx["ledger"].requeue(routed.requeues, now_ms)).count("ok")
        swept += (await ctx["ledger"].finish(routed.fails, now_ms)).count("ok")
        moved += swept
        log.warning("batch.stranded_swept", batch_id=record.id, state=record.state or "missing", jobs=swept)
    return moved


async def _sweep_missing(ctx: WorkerContext, batch_id: str, now_ms: int) -> int:
    """A batch listed live whose record is gone: its jobs' lane stands in for the record."""
    redis = ctx["redis"]
    moved = 0
    async for stranded in _stranded_in(ctx, batch_id):
        lane = await redis.hget(keys.job(stranded[0]), "lane") or b""  # type: ignore[misc]
        meta = await redis.hmget(keys.lane_meta(lane.decode()), ["provider", "model", "endpoint"])  # type: ignore[misc]
        provider, model, endpoint = (m or b"" for m in meta)
        fields = {b"id": batch_id.encode(), b"state": b"", b"lane": lane}
        fields.update({b"provider": provider, b"model": model, b"endpoint": endpoint})
        moved += await _sweep_batch(ctx, BatchRecord.from_hash(fields), now_ms)
    async with redis.pipeline(transaction=True) as pipe:
        for index in (keys.BATCHES_LIVE, keys.BATCHES_POLL, keys.BATCHES_PLANNED):
            pipe.zrem(index, batch_id)
        await pipe.execute()
    log.error("batch.record_missing", batch_id=batch_id, requeued=moved)
    return moved
