"""The job ledger: every job state change, each one atomic Lua step guarded by the prior state.

A task that runs twice, or a batch result that arrives after its job moved on, changes nothing it
should not: the script checks the state (and the batch) it expects and otherwise reports what it
found. This one rule is what makes crashes and retries safe.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from config.settings import (
    IDEMPOTENCY_TTL_S,
    JOB_TTL_S,
    LANE_IDLE_S,
    RESULT_RETENTION_S,
    SLO_BUCKET_S,
    Settings,
)
from scheduler.errors import IllegalTransition, NotFound
from scheduler.ledger import keys, scripts
from scheduler.ledger.clock import Clock
from scheduler.ledger.jobs import VIEW_FIELDS, JobRecord, NewJob

# finish.lua's fixed arguments before the result bodies (ARGV 1-8).
FINISH_FIXED_ARGS = 8
# relane.lua's fixed arguments before the adapted bodies (ARGV 1-2).
RELANE_FIXED_ARGS = 2


@dataclass(frozen=True, slots=True)
class EnqueueOutcome:
    """What enqueue did: ``created`` a job, found the ``existing`` one for the key, or a ``conflict``;
    or refused it: one ``lanes`` more than the tenant's cap, or over its ``budget`` envelope."""

    status: Literal["created", "existing", "conflict", "lanes", "budget"]
    job_id: str  # for "lanes": the tenant's lanes in use; for "budget": its spend + committed USD
    # For a created job that attached to an identical one's group (deduplication): that job's id.
    attached_to: str | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    """What a guarded state change did: ``ok`` (from ``prior``), ``refused`` (in ``prior``), ``missing``."""

    status: Literal["ok", "refused", "missing"]
    prior: str


@dataclass(slots=True)
class Finish:
    """One job's end: its result or error, usage and cost, applied only from the expected state."""

    id: str
    state: Literal["succeeded", "failed"]
    route: Literal["batch", "flex", "sync"]
    from_states: Sequence[str] = ("batched",)
    batch_id: str | None = None  # for batch results: the job must still be in this batch
    result: bytes | None = None
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    cost: dict[str, Any] | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0  # input tokens read from the provider's prompt cache (a subset of input_tokens)
    actual_usd: float = 0.0
    sync_usd: float = 0.0
    billed: bool = False  # a billed result that is not applied counts as duplicate spend
    wasted_usd: float = 0.0  # billed attempts that failed

    def encode(self, blobs: list[bytes]) -> dict[str, Any]:
        """The script's view of this item. Result, usage and cost travel apart, appended to ``blobs``
        (finish.lua's ARGV after the fixed ones); the item names their positions."""

        def blob(value: bytes | None) -> int | None:
            if value is None:
                return None
            blobs.append(value)
            return FINISH_FIXED_ARGS + len(blobs)

        return {
            "id": self.id,
            "from": list(self.from_states),
            "batch": self.batch_id,
            "r": blob(self.result),
            "u": blob(orjson.dumps(self.usage) if self.usage is not None else None),
            "c": blob(orjson.dumps(self.cost) if self.cost is not None else None),
            "state": self.state,
            "route": self.route,
            "error": orjson.dumps(self.error).decode() if self.error is not None else None,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_tokens": self.cached_tokens,
            "actual_usd": self.actual_usd,
            "sync_usd": self.sync_usd,
            "billed": self.billed,
            "wasted_usd": self.wasted_usd,
        }


@dataclass(slots=True)
class Requeue:
    """Send a job back to its lane (``lane``) or on to the sync lane (``sync``)."""

    id: str
    target: Literal["lane", "sync"]
    from_states: Sequence[str] = ("batched",)
    batch_id: str | None = None
    attempt: bool = True  # count a batch attempt
    error: dict[str, Any] | None = None

    def encode(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "from": list(self.from_states),
            "batch": self.batch_id,
            "target": self.target,
            "attempt": self.attempt,
            "error": orjson.dumps(self.error).decode() if self.error is not None else None,
        }


# Jobs per enqueue.lua call: a bulk request of more goes in several calls, so one call holds Redis
# for a few milliseconds at most.
ENQUEUE_CHUNK = 1000


def enqueue_reply(job: NewJob, reply: Any) -> EnqueueOutcome | ResponseError:
    """enqueue.lua's entry for ``job``: 1 (created), {status, job id or detail}, {'created', id,
    leader} for a follower, or {'error', message} for a job that met an error."""
    if reply == 1:
        return EnqueueOutcome("created", job.id)
    status = reply[0].decode()
    if status == "error":
        return ResponseError(reply[1].decode())
    return EnqueueOutcome(status, reply[1].decode(), reply[2].decode() if len(reply) > 2 else None)


def _enqueue_fields(job: NewJob) -> list[str]:
    """A job's entry in enqueue.lua's JSON array (its ARGV 4 describes the positions)."""
    tags = job.tags
    fields = [
        job.id,
        job.tenant,
        job.provider,
        job.endpoint,
        job.model,
        job.state,
        str(job.deadline_ms),
        str(job.created_ms),
        job.callback_url or "",
        orjson.dumps(tags).decode() if tags else "{}",
        tags.get("feature", "") if tags else "",
        job.idempotency_key or "",
        job.prefix,
        job.request_hash,
        "" if job.envelope_usd is None else repr(job.envelope_usd),
        repr(job.reserve_usd),
        day_of(job.created_ms)[:7],
    ]
    if job.dedup_digest or job.client_batch or job.traceparent:
        fields += (
            job.dedup_digest,
            job.dedup_cost,
            str(job.dedup_window_ms),
            str(job.dedup_max_followers),
            job.client_batch,
            job.custom_id,
            job.traceparent,
            job.tracestate,
        )
    return fields


@dataclass(slots=True)
class Relane:
    """Move a job from ``lane`` to its sibling lane ``to`` (provider, model, endpoint), with its body
    adapted to the sibling's model name when it names one (``body``)."""

    id: str
    lane: str
    to: str
    provider: str
    model: str
    endpoint: str
    from_states: Sequence[str] = ("queued",)
    batch_id: str | None = None  # taken from a stalled batch: the job must still be in it
    body: bytes | None = None
    prefix: str | None = None  # its prompt prefix group on ``to`` ("": none); None keeps the stored one

    def encode(self, blobs: list[bytes]) -> dict[str, Any]:
        """The script's view of this item; the adapted body travels apart, appended to ``blobs``."""
        index = None
        if self.body is not None:
            blobs.append(self.body)
            index = RELANE_FIXED_ARGS + len(blobs)
        return {
            "id": self.id,
            "from": list(self.from_states),
            "batch": self.batch_id,
            "lane": self.lane,
            "to": self.to,
            "provider": self.provider,
            "model": self.model,
            "endpoint": self.endpoint,
            "b": index,
            "prefix": self.prefix,
        }


DAY_MS = 86_400_000


def day_of(ms: int) -> str:
    """The UTC day (YYYY-MM-DD) that epoch milliseconds fall on."""
    return _day(ms // DAY_MS)


@functools.lru_cache(maxsize=64)
def _day(day: int) -> str:
    """A UTC day by its number since the epoch (every UTC day is 86,400 s in epoch time): intake asks
    once per job, and formatting a datetime was a few per cent of a bulk enqueue's CPU."""
    return datetime.fromtimestamp(day * (DAY_MS // 1000), tz=UTC).strftime("%Y-%m-%d")


class Ledger:
    """Reads and changes jobs in Redis. Construct once per process; it holds only script handles."""

    def __init__(
        self,
        redis: Redis,
        *,
        idempotency_ttl_s: int = IDEMPOTENCY_TTL_S,
        result_ttl_s: int = RESULT_RETENTION_S,
        slo_bucket_s: int = SLO_BUCKET_S,
        job_ttl_s: int = JOB_TTL_S,
        clock: Clock | None = None,
        max_lanes_per_tenant: int | None = None,
        lane_idle_s: float = LANE_IDLE_S,
    ) -> None:
        self.redis = redis
        self.job_ttl_s = job_ttl_s
        # Job ends and requeues stamped with this clock instead of the caller's ``now_ms`` (the workers'
        # ledger: the Redis server's clock, as many hosts have many clocks and the SLO buckets and
        # on-time verdicts must agree).
        self.clock = clock
        self.max_lanes_per_tenant = max_lanes_per_tenant
        self.lane_idle_ms = int(lane_idle_s * 1000)
        self.idempotency_ttl_s = idempotency_ttl_s
        self.result_ttl_s = result_ttl_s
        self.slo_bucket_s = slo_bucket_s
        self._enqueue = scripts.load(redis, "enqueue")
        self._cancel = scripts.load(redis, "cancel")
        self._finish = scripts.load(redis, "finish")
        self._requeue = scripts.load(redis, "requeue")
        self._transition = scripts.load(redis, "transition")
        self._relane = scripts.load(redis, "relane")

    @classmethod
    def for_settings(cls, redis: Redis, settings: Settings, *, clock: Clock | None = None) -> Ledger:
        """The ledger as every process builds it: TTLs and SLO bucket width from settings."""
        return cls(
            redis,
            idempotency_ttl_s=settings.limits.idempotency_ttl_s,
            result_ttl_s=settings.worker.result_retention_s,
            slo_bucket_s=settings.slo.bucket_s,
            job_ttl_s=settings.retention.job_ttl_s,
            clock=clock,
            max_lanes_per_tenant=settings.limits.max_lanes_per_tenant,
            lane_idle_s=settings.scheduler.lane_idle_s,
        )

    async def _now(self, now_ms: int) -> int:
        return await self.clock.now_ms() if self.clock is not None else now_ms

    # -- intake ---------------------------------------------------------------------------------

    def enqueue_args(self, jobs: Sequence[NewJob]) -> list[Any]:
        """enqueue.lua's ARGV for ``jobs`` (it takes no KEYS: it builds them as keys.py does): the
        settings, every job's small fields as one JSON array, then the bodies."""
        args: list[Any] = [
            self.idempotency_ttl_s,
            "" if self.max_lanes_per_tenant is None else self.max_lanes_per_tenant,
            self.lane_idle_ms,
            orjson.dumps([_enqueue_fields(job) for job in jobs]),
        ]
        args.extend([job.body for job in jobs])
        return args

    async def enqueue(self, job: NewJob) -> EnqueueOutcome:
        """Store and queue one job, or return the job an idempotency key already names."""
        outcome = (await self.enqueue_chunk([job]))[0]
        if isinstance(outcome, ResponseError):
            raise outcome
        return outcome

    async def enqueue_chunk(self, jobs: Sequence[NewJob]) -> list[EnqueueOutcome | ResponseError]:
        """One call of enqueue.lua for ``jobs`` (at most :data:`ENQUEUE_CHUNK`): each job's outcome, or
        the error that job alone met (the others are stored or refused as if enqueued one by one)."""
        if not jobs:
            return []
        replies = await self._enqueue(args=self.enqueue_args(jobs))
        return [enqueue_reply(job, reply) for job, reply in zip(jobs, replies, strict=True)]

    async def enqueue_each(self, jobs: Sequence[NewJob]) -> list[EnqueueOutcome | ResponseError]:
        """Enqueue jobs in order, a chunk per script call: each job's outcome, or the error it met
        (a key of the wrong type, Redis out of memory: it wrote nothing). A call Redis answered with an
        error (BUSY running another script: it did not run) is that error for each job of its chunk;
        the later chunks are still tried. So the caller can tell each job apart: those created stay
        created when others failed. A lost connection or a timeout raises (what it stored is unknown)."""
        outcomes: list[EnqueueOutcome | ResponseError] = []
        for start in range(0, len(jobs), ENQUEUE_CHUNK):
            chunk = jobs[start : start + ENQUEUE_CHUNK]
            try:
                outcomes += await self.enqueue_chunk(chunk)
            except ResponseError as exc:
                outcomes += [exc] * len(chunk)
        return outcomes

    async def enqueue_many(self, jobs: Sequence[NewJob]) -> list[EnqueueOutcome]:
        """Enqueue jobs in order, a chunk per script call; each job is judged on its own, so one conflict
        rejects only itself. A job that met an error raises it (after every job was tried)."""
        outcomes: list[EnqueueOutcome] = []
        failed: ResponseError | None = None
        for outcome in await self.enqueue_each(jobs):
            if isinstance(outcome, ResponseError):
                failed = failed or outcome
            else:
                outcomes.append(outcome)
        if failed is not None:
            raise failed
        return outcomes

    async def prior_job(self, job: NewJob) -> str | None:
        """The job id the job's idempotency key already names for this same request, or None.

        Intake asks only when admission refused a keyed job: a retry of a stored job is no new job.
        """
        if not job.idempotency_key:
            return None
        prior: bytes | None = await self.redis.get(keys.idempotency(job.tenant, job.idempotency_key))
        if prior is None:
            return None
        prior_id, _, prior_hash = prior.decode().partition("|")
        return prior_id if prior_hash == job.request_hash else None

    # -- reads ----------------------------------------------------------------------------------

    async def get(self, job_id: str) -> JobRecord | None:
        """The job's record, or None."""
        raw: dict[bytes, bytes] = await self.redis.hgetall(keys.job(job_id))  # type: ignore[misc]
        return JobRecord.from_hash(raw) if raw else None

    async def get_many(self, job_ids: Sequence[str]) -> list[JobRecord | None]:
        """Records for many jobs in one round trip, in order."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(keys.job(job_id))
            raws = await pipe.execute()
        return [JobRecord.from_hash(raw) if raw else None for raw in raws]

    async def get_view(self, job_id: str) -> JobRecord | None:
        """The job's record with only the fields its view shows (no request body), or None."""
        values = await self.redis.hmget(keys.job(job_id), list(VIEW_FIELDS))  # type: ignore[misc]
        return JobRecord.from_view_fields(values)

    async def get_views(self, job_ids: Sequence[str]) -> list[JobRecord | None]:
        """Records for many jobs with only the fields their view shows (no request body), in order."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(keys.job(job_id), list(VIEW_FIELDS))
            rows = await pipe.execute()
        return [JobRecord.from_view_fields(row) for row in rows]

    async def _listing_index(self, tenant: str, status: str | None, feature: str | None) -> str:
        """The index a listing walks: the filter's own, the smaller of two, or all the tenant's jobs."""
        if status and feature:
            by_status, by_feature = keys.tenant_status(tenant, status), keys.tenant_feature(tenant, feature)
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zcard(by_status)
                pipe.zcard(by_feature)
                n_status, n_feature = await pipe.execute()
            return by_status if n_status <= n_feature else by_feature
        if status:
            return keys.tenant_status(tenant, status)
        if feature:
            return keys.tenant_feature(tenant, feature)
        return keys.tenant_jobs(tenant)

    async def result(self, job_id: str) -> bytes | None:
        """The job's result body while retention keeps it."""
        value: bytes | None = await self.redis.get(keys.result(job_id))
        return value

    async def list_jobs(
        self,
        tenant: str,
        *,
        status: str | None = None,
        feature: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[JobRecord], str | None]:
        """A tenant's jobs, newest first, from after ``cursor``; returns the page and the next cursor.

        A filter walks its own index (per-tenant per-status or per-feature, bounded by retention);
        with both, the smaller one, checking the other on each record. Only the view's fields are
        read (HMGET), never request bodies.
        """
        index = await self._listing_index(tenant, status, feature)
        upper: bytes | str = f"({cursor}" if cursor else "+"
        page: list[JobRecord] = []
        scan = limit + 1 if not (status and feature) else max(limit * 2, 100)
        while len(page) < limit:
            ids = await self.redis.zrevrangebylex(index, upper, "-", start=0, num=scan)
            if not ids:
                return page, None
            records = await self.get_views([i.decode() for i in ids])
            for job_id, record in zip(ids, records, strict=True):
                upper = b"(" + job_id
                if record is None:
                    continue
                if status and record.state != status:
                    continue
                if feature and record.tags.get("feature") != feature:
                    continue
                page.append(record)
                if len(page) == limit:
                    return page, record.id
            if len(ids) < scan:
                return page, None
        return page, page[-1].id if page else None

    # -- state changes --------------------------------------------------------------------------

    async def transition(
        self, job_id: str, from_states: Iterable[str], to_state: str, **fields: str | int | bytes
    ) -> Transition:
        """Move a job to ``to_state`` only from one of ``from_states``, setting ``fields`` with it."""
        args: list[Any] = [",".join(from_states), to_state]
        for name, value in fields.items():
            args.extend((name, value))
        status, prior = await self._transition(keys=[keys.job(job_id)], args=args)
        return Transition(status.decode(), prior.decode())

    async def cancel(self, job_id: str, now_ms: int) -> Transition:
        """Cancel a live job; raise NotFound or IllegalTransition (already terminal)."""
        status, prior = await self._cancel(keys=[keys.job(job_id)], args=[job_id, now_ms, self.job_ttl_s])
        outcome = Transition(status.decode(), prior.decode())
        if outcome.status == "missing":
            raise NotFound(f"no job {job_id}")
        if outcome.status == "refused":
            raise IllegalTransition(f"job {job_id} is already {outcome.prior}", "status")
        return outcome

    async def cancel_many(self, job_ids: Sequence[str], now_ms: int) -> list[str]:
        """Cancel many jobs in one pipeline, each its own guarded step; one status per job (``ok``,
        ``refused``: it had ended, ``missing``)."""
        if not job_ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                await self._cancel(
                    keys=[keys.job(job_id)], args=[job_id, now_ms, self.job_ttl_s], client=pipe
                )
            replies = await pipe.execute()
        return [status.decode() for status, _ in replies]

    def _finish_args(self, items: Sequence[Finish], now_ms: int) -> list[Any]:
        """finish.lua's arguments: the items as JSON, the fixed settings, then the raw blobs.

        Result bodies, usage and cost stay out of the JSON: escaping kilobytes of JSON inside JSON
        and decoding it again in Lua cost more than the rest of the step.
        """
        day = day_of(now_ms)
        blobs: list[bytes] = []
        encoded = [item.encode(blobs) for item in items]
        fixed: list[Any] = [
            orjson.dumps(encoded),
            now_ms,
            min(self.result_ttl_s, self.job_ttl_s) * 1000,  # a result never outlives its job
            day,
            day[:7],
            self.slo_bucket_s,
            keys.AGG_TTL_S,
            self.job_ttl_s,
        ]
        return fixed + blobs

    async def finish(self, items: Sequence[Finish], now_ms: int) -> list[str]:
        """Apply a chunk of job ends; returns one code per item (``ok``, ``skip:<state>``, ``missing``)."""
        if not items:
            return []
        codes = await self._finish(args=self._finish_args(items, await self._now(now_ms)))
        return [c.decode() for c in codes]

    async def queue_finish(self, pipe: Pipeline, items: Sequence[Finish], now_ms: int) -> None:
        """Queue :meth:`finish` on a transaction (its reply is the codes, as bytes)."""
        await self._finish(args=self._finish_args(items, await self._now(now_ms)), client=pipe)

    async def requeue(self, items: Sequence[Requeue], now_ms: int) -> list[str]:
        """Send a chunk of jobs back to their lane or on to sync; one code per item."""
        if not items:
            return []
        codes = await self._requeue(
            args=[orjson.dumps([item.encode() for item in items]), await self._now(now_ms)]
        )
        return [c.decode() for c in codes]

    async def relane(self, items: Sequence[Relane], now_ms: int) -> list[str]:
        """Move a chunk of jobs to sibling lanes (one guarded step per job); one code per item."""
        if not items:
            return []
        blobs: list[bytes] = []
        encoded = orjson.dumps([item.encode(blobs) for item in items])
        codes = await self._relane(args=[encoded, await self._now(now_ms), *blobs])
        return [c.decode() for c in codes]

    async def queue_requeue(self, pipe: Pipeline, items: Sequence[Requeue], now_ms: int) -> None:
        """Queue :meth:`requeue` on a transaction (its reply is the codes, as bytes)."""
        now_ms = await self._now(now_ms)
        await self._requeue(args=[orjson.dumps([item.encode() for item in items]), now_ms], client=pipe)
