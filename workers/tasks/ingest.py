"""Ingestion: stream an ended batch's results into the ledger, in chunks, resumably.

``ingest_batch(batch_id)`` reads the provider's result lines one at a time and applies them a chunk
(``settings.worker.ingest_chunk`` lines) at a time: a success finishes its job with the
provider-native body, usage and cost; a permanent failure fails it with the provider's error; a
retriable failure (expired, cancelled, rate-limited, overloaded, server error) goes where
:func:`scheduler.policy.route_retry` says (:mod:`workers.tasks.routing`): back to its lane with the
attempt counted while attempts and the deadline allow, else on to the sync lane, or, for a tenant
barred from paid sync whose attempts are used up, failed. Every
change is guarded by the job still being ``batched`` in this batch, so a line for a job that moved
on (flipped, cancelled, a duplicate batch's) changes nothing and is counted as skipped.

Each chunk's ledger changes and the resume cursor (``keys.batch_cursor``: lines applied) move in
one MULTI/EXEC transaction, so a worker killed at any point leaves either the whole chunk applied
and counted in the cursor, or none of it; the retry skips exactly the applied lines (providers'
result files, and the emulator's, are stable across downloads) and the ledger ends identical to an
uninterrupted run. Without that, a re-applied billed line would be counted as duplicate spend.
Jobs of the batch that got no result line at all go back to their lane at the end, and the batch
is marked ``ingested`` (guarded: only from ``ended``).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from arq import Retry
from redis.asyncio import Redis

from config.settings import Settings
from scheduler import policy
from scheduler.costs import pricing
from scheduler.ledger import keys, tasks
from scheduler.ledger.clock import Clock, ServerClock
from scheduler.ledger.ledger import Finish, Ledger, Requeue
from scheduler.planning.batches import Batches, BatchRecord
from workers import traces
from workers.context import WorkerContext, call_hook
from workers.errors import ProviderError
from workers.providers.base import ProviderAdapter, ResultLine
from workers.summary import note, summarised
from workers.tasks import files
from workers.tasks.batches import bound_batch, learn_end
from workers.tasks.routing import Routed, route_back

log = structlog.get_logger(__name__)

# A cursor outlives any retry of its ingestion; it is deleted once the batch is ingested.
CURSOR_TTL_S = 7 * 24 * 3600
_rng = random.Random()  # jitter of download retries
COST_MEMO = 4096  # distinct usages whose priced fields an ingestion keeps
NO_RESULT_ERROR = {"type": "no_result", "message": "the provider returned no result line for this request"}


async def answered_jobs(redis: Redis, batch_id: str, answered: set[str], chunk: int = 1000) -> int:
    """How many of ``answered`` (custom ids read from a result file) are jobs of ``batch_id``: a
    result file is never taken at its line count, which a foreign batch's would match."""
    ids = list(answered)
    if not ids:
        return 0
    async with redis.pipeline(transaction=False) as pipe:
        for start in range(0, len(ids), chunk):
            pipe.smismember(keys.batch_jobs(batch_id), ids[start : start + chunk])
        replies = await pipe.execute()
    return sum(1 for flags in replies for f in flags if f)


@dataclass(slots=True)
class Prepared:
    """A chunk of result lines turned into ledger changes, ready for one transaction."""

    lines: int
    finishes: list[Finish]
    retriable: list[ResultLine]


class Ingestion:
    """Applies one batch's result lines to the ledger; one instance per task run."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        ledger: Ledger,
        batch: BatchRecord,
        adapter: ProviderAdapter,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock or ServerClock(redis)  # the worker's ctx["clock"]
        self.redis = redis
        self.ledger = ledger
        self.batch = batch
        self.owner = batch.owner_id  # the batch id its jobs carry
        self.adapter = adapter
        self.kind = adapter.kind
        self.pricing = pricing.shared(settings.pricing_file)
        provider = settings.providers.get(batch.provider)
        # The model the batch's deployment runs (Azure), as prices name it.
        self.model = provider.priced_model(batch.model) if provider is not None else batch.model
        self.pending: Counter[str] = Counter()  # outcome counts not yet added to the batch record
        self.totals: Counter[str] = Counter()
        self._costs: dict[pricing.Usage | None, dict[str, Any]] = {}  # cost_fields' memo
        self._by_usage: dict[int, tuple[dict[str, Any] | None, dict[str, Any]]] = {}

    def finish_for(self, line: ResultLine) -> Finish:
        """The ledger change a succeeded or permanently failed line makes."""
        base: dict[str, Any] = {"route": "batch", "from_states": ("batched",), "batch_id": self.owner}
        if line.outcome == "succeeded":
            return Finish(
                line.custom_id,
                "succeeded",
                result=line.body,
                usage=line.usage,
                billed=True,
                **base,
                **self.cost_fields(line.usage),
            )
        cost = self.pricing.job_cost(self.batch.provider, self.kind, self.model, "batch", line.usage)
        wasted = (cost.actual_usd or 0.0) if line.billed else 0.0
        return Finish(
            line.custom_id,
            "failed",
            error=line.error or {"type": "unknown", "message": "the provider gave no error"},
            usage=line.usage,
            billed=line.billed,
            wasted_usd=wasted,
            **base,
        )

    def cost_fields(self, usage: dict[str, Any] | None) -> dict[str, Any]:
        """A success's priced fields for :class:`Finish`, memoised: a batch's lines repeat a few token
        counts, and pricing each anew was the largest part of a line's CPU. The same prices as
        :meth:`pricing.Pricing.job_cost` (normalise, then :meth:`~pricing.Pricing.usage_cost`).

        Adapters hand out one shared dict per distinct usage (:func:`workers.providers.jsonl.usage_of`),
        so the memo is first by that dict's identity (an entry holds the dict, so its id cannot be
        reused while cached), then by the normalised usage. Nothing mutates the shared fields.
        """
        known = self._by_usage.get(id(usage))
        if known is not None and known[0] is usage:
            return known[1]
        normal = pricing.normalize_usage(self.kind, usage)
        fields = self._costs.get(normal)
        if fields is None:
            cost = self.pricing.usage_cost(self.batch.provider, self.kind, self.model, "batch", normal)
            fields = cost.finish_fields()
            if len(self._costs) < COST_MEMO:
                self._costs[normal] = fields
        if len(self._by_usage) < COST_MEMO:
            self._by_usage[id(usage)] = (usage, fields)
        return fields

    async def requeues_for(
        self, ids: Sequence[str], errors: Sequence[dict[str, Any] | None], now_ms: int
    ) -> Routed:
        """Back to the lane, on to sync, or failed: :func:`scheduler.policy.route_retry` decides."""
        return await route_back(self.settings, self.redis, self.batch, ids, errors, now_ms)

    def prepare(self, lines: Sequence[ResultLine]) -> Prepared:
        """The chunk's ledger changes, priced; pure CPU, so it overlaps the previous chunk's Redis step."""
        return Prepared(
            lines=len(lines),
            finishes=[self.finish_for(line) for line in lines if line.outcome != "retriable"],
            retriable=[line for line in lines if line.outcome == "retriable"],
        )

    async def apply(self, chunk: Prepared) -> None:
        """Apply one prepared chunk and advance the cursor past it, all in one transaction."""
        now_ms = await self.clock.now_ms()
        retriable = chunk.retriable
        routed = await self.requeues_for(
            [line.custom_id for line in retriable], [line.error for line in retriable], now_ms
        )
        finishes, requeues = chunk.finishes + routed.fails, routed.requeues
        async with self.redis.pipeline(transaction=True) as pipe:
            if finishes:
                await self.ledger.queue_finish(pipe, finishes, now_ms)
            if requeues:
                await self.ledger.queue_requeue(pipe, requeues, now_ms)
            pipe.incrby(keys.batch_cursor(self.batch.id), chunk.lines)
            pipe.expire(keys.batch_cursor(self.batch.id), CURSOR_TTL_S)
            replies = await pipe.execute()
        finish_codes = [c.decode() for c in replies[0]] if finishes else []
        requeue_codes = [c.decode() for c in replies[1 if finishes else 0]] if requeues else []
        self.count(finishes, finish_codes, requeues, requeue_codes)
        await self.flush_counts()

    def count(
        self,
        finishes: Sequence[Finish],
        fcodes: Sequence[str],
        requeues: Sequence[Requeue],
        rcodes: Sequence[str],
    ) -> None:
        for item, code in zip(finishes, fcodes, strict=True):
            self.pending[item.state if code == "ok" else "skipped"] += 1
        for req, code in zip(requeues, rcodes, strict=True):
            self.pending[
                ("requeued" if req.target == "lane" else "flipped") if code == "ok" else "skipped"
            ] += 1
        self.totals.update(self.pending)

    async def flush_counts(self) -> None:
        """Add this chunk's outcome counts to the batch record (a crash here loses counts, never jobs)."""
        if not self.pending:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            for name, n in self.pending.items():
                pipe.hincrby(keys.batch(self.batch.id), f"ingest_{name}", n)
            await pipe.execute()
        self.pending.clear()

    async def requeue_unanswered(self) -> int:
        """Jobs still ``batched`` in this batch got no result line: back to their lane (or on to sync)."""
        if self.batch.duplicate_of:
            return 0  # a duplicate's jobs belong to the original batch, which answers for them
        moved = 0
        async for ids in Batches(self.redis).job_ids(self.owner):
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hmget(keys.job(job_id), ["state", "batch_id"])
                rows = await pipe.execute()
            waiting = [
                i for i, (s, b) in zip(ids, rows, strict=True) if s == b"batched" and b == self.owner.encode()
            ]
            now_ms = await self.clock.now_ms()
            routed = await self.requeues_for(waiting, [NO_RESULT_ERROR] * len(waiting), now_ms)
            moved += (await self.ledger.requeue(routed.requeues, now_ms)).count("ok")
            failed = (await self.ledger.finish(routed.fails, now_ms)).count("ok")
            if failed:
                await self.redis.hincrby(keys.batch(self.batch.id), "ingest_failed", failed)  # type: ignore[misc]
        if moved:
            await self.redis.hincrby(keys.batch(self.batch.id), "ingest_unanswered", moved)  # type: ignore[misc]
        return moved


@summarised(tasks.INGEST_BATCH)
@traces.batch_span("batch.ingest")
async def ingest_batch(c: WorkerContext, batch_id: str) -> dict[str, int]:
    """arq task: ingest an ended batch's results; a re-run resumes from the cursor and changes nothing twice."""
    settings, redis = c["settings"], c["redis"]
    batches, record = await bound_batch(c, batch_id)
    if record is None or record.state != "ended" or not record.provider_batch_id:
        note(skipped=True, state=record.state if record else None)
        return {}
    if record.raw.get("ended_by") == "event":
        record = await learn_end(c, batches, record)
    ingestion = Ingestion(settings, redis, c["ledger"], record, c["adapters"][record.provider], c["clock"])
    skip = int(await redis.get(keys.batch_cursor(batch_id)) or 0)
    note(resumed_from=skip)
    try:
        totals = await _stream(c, ingestion, skip)
    except ProviderError as exc:
        if not exc.retriable:
            return await _unreadable(c, ingestion, exc)
        # The download failed midway: try again later, resuming from the cursor.
        sched = settings.scheduler
        delay = policy.backoff(c.get("job_try", 1) - 1, sched.poll_initial_s, sched.poll_max_s, _rng)
        log.warning("batch.ingest_retry", error=str(exc), delay=delay)
        raise Retry(defer=delay) from exc
    now_ms = await c["clock"].now_ms()
    await batches.update(batch_id, ("ended",), now_ms=now_ms, to_state="ingested", ingested_ms=now_ms)
    await redis.delete(keys.batch_cursor(batch_id))
    await files.discard(c, record.provider, files.files_of(record), files.OUTPUT_ROLES)
    return totals


async def _unreadable(c: WorkerContext, ingestion: Ingestion, exc: ProviderError) -> dict[str, int]:
    """The provider will not give this batch's results (say the file is gone): its jobs still waiting
    go back to their lane, or on to sync, and the batch fails with the provider's reason."""
    moved = await ingestion.requeue_unanswered()
    now_ms = await c["clock"].now_ms()
    await Batches(c["redis"]).update(
        ingestion.batch.id, ("ended",), now_ms=now_ms, to_state="failed", error=str(exc), failed_ms=now_ms
    )
    await c["redis"].delete(keys.batch_cursor(ingestion.batch.id))
    log.error("batch.results_unreadable", error=str(exc), requeued=moved)
    return {"unanswered": moved}


async def _stream(c: WorkerContext, ingestion: Ingestion, skip: int) -> dict[str, int]:
    """Read every result line past ``skip``, applying chunks; then requeue the jobs left unanswered.

    While one chunk's transaction runs in Redis, the next chunk is downloaded and parsed; chunks
    are still applied one after another, in order, so the cursor always counts a prefix.
    """
    batch_id = ingestion.batch.id
    chunk_size = c["settings"].worker.ingest_chunk
    assert ingestion.batch.provider_batch_id is not None
    seen, chunk_no = 0, 0
    answered: set[str] = set()
    chunk: list[ResultLine] = []
    applying: asyncio.Task[None] | None = None
    try:
        async for block in ingestion.adapter.result_blocks(ingestion.batch.provider_batch_id):
            if seen + len(block) <= skip:  # already applied by an earlier run
                seen += len(block)
                continue
            for line in block:
                seen += 1
                if seen <= skip:
                    continue
                answered.add(line.custom_id)
                chunk.append(line)
                if len(chunk) >= chunk_size:
                    prepared = ingestion.prepare(chunk)  # while the previous chunk is in Redis
                    if applying is not None:
                        await applying
                        chunk_no += 1
                        await call_hook(
                            c, "ingest_after_chunk", batch_id=batch_id, chunk=chunk_no, lines=seen
                        )
                    applying = asyncio.create_task(ingestion.apply(prepared))
                    chunk = []
        if applying is not None:
            await applying
            applying = None
        if chunk:
            await ingestion.apply(ingestion.prepare(chunk))
    finally:
        if applying is not None:  # interrupted: the transaction in flight lands whole or not at all
            applying.cancel()
    totals = dict(ingestion.totals)
    # Every one of our jobs answered (the usual case, decided by job ids, not by line counts) makes
    # the sweep of the batch's job set unnecessary.
    members = await ingestion.redis.scard(keys.batch_jobs(ingestion.owner))  # type: ignore[misc]
    complete = (
        skip == 0
        and not ingestion.batch.duplicate_of
        and await answered_jobs(ingestion.redis, ingestion.owner, answered) >= members
    )
    totals["unanswered"] = 0 if complete else await ingestion.requeue_unanswered()
    totals["lines"] = seen
    return totals
