"""Batch tasks: submit a planned batch, poll a batch in flight, cancel one, reconcile stale ones.

Each task is short and idempotent: it reads the batch record, does one piece of I/O, and records
the outcome with a guarded step, so a task that runs twice, or after another already did the work,
changes nothing. Submission is crash-safe and happens once: it runs under the batch's submission
lease (:mod:`workers.tasks.lease`); ``create_started_ms`` is written under the lease right before
the provider's create call, and any later run that finds it set (an arq re-run after a crash, a
resubmission by reconciliation) first looks for the provider batch that is verifiably ours
(:mod:`workers.tasks.matching`) and adopts it, and only then creates. Once a batch has ended its
input file is deleted at the provider, and once ingested its outputs (:mod:`workers.tasks.files`).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import structlog
from arq import Retry
from structlog.contextvars import bind_contextvars

from scheduler import policy
from scheduler.ledger import keys, scripts, tasks
from scheduler.ledger.ledger import Finish, Requeue
from scheduler.planning import prefixes
from scheduler.planning.batches import Batches, BatchRecord
from scheduler.provider_events import first_poll_s, safety_poll_s
from scheduler.slo.health import observed_turnaround_s, parse_samples
from workers import traces
from workers.context import WorkerContext, call_hook
from workers.errors import (
    AuthenticationError,
    BatchCreateUnknown,
    BatchTooLarge,
    InvalidBatchInput,
    LeaseLost,
    ProviderError,
    ProviderHTTPError,
    ProviderNotFound,
)
from workers.providers.base import BatchInfo, BatchLine, ProviderAdapter
from workers.summary import note, summarised
from workers.tasks import files, matching
from workers.tasks.lease import SubmitLease
from workers.tasks.outcomes import CancelOutcome, PollOutcome, SubmitOutcome
from workers.tasks.refusals import RETRIABLE_CODES, reason_of, refuse

log = structlog.get_logger(__name__)

BODY_CHUNK = 1000  # job bodies read per pipelined round trip while building a batch input
_rng = random.Random()  # jitter of submission retries


async def batch_lines(ctx: WorkerContext, record: BatchRecord, sent: list[int]) -> AsyncIterator[BatchLine]:
    """The batch's requests, read in pipelined chunks; jobs no longer in this batch are left out.

    In a lane that groups by prompt prefix, jobs sharing a prefix come out adjacent and their bodies
    carry the provider's cache hints (:mod:`scheduler.planning.prefixes`). ``sent`` (one counter)
    counts the lines produced, for the record.
    """
    redis, settings = ctx["redis"], ctx["settings"]
    account = settings.providers.get(record.provider)
    grouped = account is not None and settings.lane_settings(record.lane).group_prefixes is not False
    kind = account.kind if account is not None else ""
    if kind == "openai" and account is not None and not account.prompt_cache_key:
        kind = ""  # an OpenAI-compatible host that refuses the field: no hint
    bodies = scripts.load(redis, "batch_bodies")
    # A batch whose reservation counted no prefixed job (``prefixed``) needs no prefix read to order.
    prefixed = grouped and record.raw.get("prefixed") != "0"
    async for chunk in _ordered_job_ids(ctx, record.id, grouped=grouped, prefixed=prefixed):
        # One call per chunk (batch_bodies.lua): only jobs still batched here, with a body.
        rows = await bodies(args=[record.id, *chunk])
        for i in range(0, len(rows), 3):
            body, prefix = rows[i + 1], rows[i + 2]
            sent[0] += 1
            if grouped and prefix:
                body = prefixes.with_cache_hints(body, prefix.decode(), kind=kind, endpoint=record.endpoint)
            yield BatchLine(custom_id=rows[i].decode(), body=body)


async def _ordered_job_ids(
    ctx: WorkerContext, batch_id: str, *, grouped: bool, prefixed: bool = True
) -> AsyncIterator[list[str]]:
    """The batch's job ids in chunks: as stored, or (grouped) sorted by prefix so a group is adjacent.

    Sorting reads only ids and prefix keys (a few dozen bytes a job), never the bodies; with no
    prefixed job in the batch (``prefixed`` false) every key is empty, so the ids sort alone.
    """
    batches, redis = Batches(ctx["redis"]), ctx["redis"]
    if not grouped:
        async for chunk in batches.job_ids(batch_id, BODY_CHUNK):
            yield chunk
        return
    if not prefixed:
        ids = [job_id async for chunk in batches.job_ids(batch_id, BODY_CHUNK) for job_id in chunk]
        ids.sort()
        for start in range(0, len(ids), BODY_CHUNK):
            yield ids[start : start + BODY_CHUNK]
        return
    keyed: list[tuple[bytes, str]] = []
    prefixes_of = scripts.load(redis, "job_prefixes")
    async for chunk in batches.job_ids(batch_id, BODY_CHUNK):
        found = await prefixes_of(args=chunk)  # one call per chunk (job_prefixes.lua)
        keyed.extend(zip(found, chunk, strict=True))
    keyed.sort()
    for start in range(0, len(keyed), BODY_CHUNK):
        yield [job_id for _, job_id in keyed[start : start + BODY_CHUNK]]


async def bound_batch(ctx: WorkerContext, batch_id: str) -> tuple[Batches, BatchRecord | None]:
    """A batch task's record (None: gone), with its ids bound to the task's log lines."""
    bind_contextvars(batch_id=batch_id)
    batches = Batches(ctx["redis"])
    record = await batches.get(batch_id)
    if record is not None:
        bind_contextvars(lane=record.lane, provider=record.provider)
    return batches, record


@summarised(tasks.SUBMIT_BATCH)
@traces.batch_span("batch.submit")
async def submit_batch(ctx: WorkerContext, batch_id: str) -> SubmitOutcome:
    """Create the provider batch of planned batch ``batch_id`` and record its id; returns the outcome.

    The task works under the batch's submission lease (:mod:`workers.tasks.lease`), held by its
    arq job id, so neither a second submission nor reconciliation can create the batch meanwhile.
    """
    batches, record = await bound_batch(ctx, batch_id)
    if record is None:
        return SubmitOutcome.MISSING
    if record.state != "planned":
        note(state=record.state)
        return SubmitOutcome.SKIPPED
    adapter = ctx["adapters"].get(record.provider)
    if adapter is None:
        log.error("batch.provider_unconfigured")
        return SubmitOutcome.NO_ADAPTER
    holder = ctx.get("job_id") or tasks.submit_job_id(batch_id, record.attempts)
    lease = SubmitLease(batches, ctx["settings"], batch_id, holder, ctx["clock"])
    taken = await lease.acquire(await ctx["clock"].now_ms())
    if taken != "ok":
        note(lease=taken)
        return SubmitOutcome.LEASED
    if record.raw.get("create_started_ms"):
        # An earlier run got as far as the create call: the provider may hold the batch already.
        async with lease.heartbeat():  # verifying a candidate reads its requests: it may take a while
            verdict = await matching.adopt(ctx, batches, adapter, record, await ctx["clock"].now_ms())
        if verdict == "ours":
            return SubmitOutcome.ADOPTED
        if verdict == "unknown":  # a candidate not readable yet: reconciliation decides later
            await lease.release()
            return SubmitOutcome.UNVERIFIED
    sent = [0]

    async def before_create() -> None:
        await lease.before_create()
        await call_hook(ctx, "before_create", batch_id=batch_id)

    try:
        async with lease.heartbeat():
            info = await adapter.submit_batch(
                batch_lines(ctx, record, sent),
                endpoint=record.endpoint,
                batch_id=batch_id,
                before_create=before_create,
            )
    except LeaseLost as exc:
        log.warning("batch.submit_lease_lost", outcome=exc.outcome)
        return SubmitOutcome.LEASE_LOST
    except BatchCreateUnknown as exc:
        log.warning("batch.create_unknown", reason=exc.reason)
        await lease.release()
        # Left planned: reconciliation finds it or resubmits after the create timeout.
        return SubmitOutcome.UNKNOWN
    except InvalidBatchInput as exc:
        return await _drop_bad_line(ctx, batches, record, exc)
    except BatchTooLarge as exc:
        reason = {"type": "batch_refused", "code": "batch_too_large", "message": str(exc)}
        await refuse(ctx, batches, record, reason, retriable=True, now_ms=await ctx["clock"].now_ms())
        return SubmitOutcome.REFUSED
    except ProviderHTTPError as exc:
        if exc.retriable or isinstance(exc, AuthenticationError):
            return await _retry(ctx, lease, exc)
        reason = {"type": "batch_refused", "code": exc.type or str(exc.status), "message": exc.message}
        retriable = reason["code"] in RETRIABLE_CODES
        await refuse(ctx, batches, record, reason, retriable=retriable, now_ms=await ctx["clock"].now_ms())
        return SubmitOutcome.REFUSED
    except ProviderError as exc:  # nothing reached the provider (connect failures)
        return await _retry(ctx, lease, exc)
    if sent[0] == 0:  # every job left the batch (cancelled or flipped) before it was sent
        await batches.update(batch_id, ("planned",), now_ms=await ctx["clock"].now_ms(), to_state="cancelled")
        return SubmitOutcome.EMPTY
    await call_hook(ctx, "after_create", batch_id=batch_id, provider_batch_id=info.provider_batch_id)
    return await record_created(ctx, batches, record, info, sent=sent[0])


async def _retry(ctx: WorkerContext, lease: SubmitLease, exc: ProviderError) -> SubmitOutcome:
    """Try the submission again later with backoff, the lease held over the wait; after the last
    try the lease is released and reconciliation takes over."""
    job_try = ctx.get("job_try", 1)
    if job_try >= ctx["settings"].scheduler.max_attempts:
        log.warning("batch.submit_gave_up", error=str(exc), tries=job_try)
        await lease.release()
        return SubmitOutcome.GAVE_UP
    sched = ctx["settings"].scheduler
    after = getattr(exc, "retry_after", None) or policy.backoff(
        job_try - 1, sched.poll_initial_s, sched.poll_max_s, _rng
    )
    await lease.renew(extra_s=after)
    await call_hook(ctx, "submit_retry", batch_id=lease.batch_id, job_try=job_try, defer_s=after)
    raise Retry(defer=after) from exc


async def _first_poll_s(ctx: WorkerContext, lane: str, now_ms: int) -> float:
    """When to poll a new batch first, from its lane's recent turnarounds (one list read per batch):
    a lane whose batches end in seconds is not left waiting ``poll_initial_s``."""
    slo = ctx["settings"].slo
    raw: list[bytes] = await ctx["redis"].lrange(keys.lane_turnarounds(lane), 0, slo.history_size - 1)  # type: ignore[misc]
    recent = parse_samples(raw, now_ms, slo.history_max_age_s, slo.history_size)
    return policy.first_poll_s(recent, ctx["settings"].scheduler)


async def record_created(
    ctx: WorkerContext, batches: Batches, record: BatchRecord, info: BatchInfo, *, sent: int
) -> SubmitOutcome:
    """Record the provider's id on the planned batch; a second provider batch becomes a duplicate."""
    now_ms = await ctx["clock"].now_ms()
    poll_s = safety_poll_s(
        max(await _first_poll_s(ctx, record.lane, now_ms), _poll_floor_s(ctx, record.provider)),
        ctx["settings"].providers.get(record.provider),
    )
    outcome = await batches.mark_submitted(
        record.id, record.provider, info.provider_batch_id, now_ms=now_ms, poll_s=poll_s, how="created"
    )
    if outcome == "ok":
        # An end event that came before the id was recorded (checked after it was): poll it now.
        redis, pbid = ctx["redis"], info.provider_batch_id
        early = await first_poll_s(redis, ctx["settings"], record.provider, pbid, poll_s) < poll_s
        next_poll_ms: int | str = now_ms if early else ""  # "": the due time stays
        await batches.update(record.id, ("submitted",), now_ms=now_ms, next_poll_ms=next_poll_ms, sent=sent)
        log.info(
            "batch.submitted", batch_id=record.id, lane=record.lane, provider_batch_id=info.provider_batch_id
        )
        return SubmitOutcome.SUBMITTED
    if outcome.startswith("skip:"):
        # Another run recorded a different provider batch first: this one is a duplicate.
        await batches.record_duplicate(
            record.id, record.provider, info.provider_batch_id, now_ms=now_ms, poll_s=poll_s
        )
        log.warning("batch.duplicate", batch_id=record.id, provider_batch_id=info.provider_batch_id)
        return SubmitOutcome.DUPLICATE
    log.warning("batch.submit_unrecorded", batch_id=record.id, outcome=outcome)
    return SubmitOutcome.MISSING if outcome == "missing" else SubmitOutcome.CLAIMED


async def _drop_bad_line(
    ctx: WorkerContext, batches: Batches, record: BatchRecord, exc: InvalidBatchInput
) -> SubmitOutcome:
    """One line cannot be sent: fail that job, send the rest back to the lane without an attempt."""
    now_ms = await ctx["clock"].now_ms()
    error = {"type": "invalid_request", "code": "invalid_batch_line", "message": exc.reason}
    await ctx["ledger"].finish(
        [Finish(exc.custom_id, "failed", "batch", batch_id=record.id, error=error)], now_ms
    )
    async for chunk in batches.job_ids(record.id):
        back = [Requeue(j, "lane", batch_id=record.id, attempt=False) for j in chunk if j != exc.custom_id]
        await ctx["ledger"].requeue(back, now_ms)
    await batches.update(record.id, ("planned",), now_ms=now_ms, to_state="cancelled")
    log.warning("batch.line_refused", batch_id=record.id, job_id=exc.custom_id, reason=exc.reason)
    return SubmitOutcome.LINE_REFUSED


def _poll_floor_s(ctx: WorkerContext, provider: str) -> float:
    """The provider's shortest wait between two polls of one batch (Azure asks for a minute)."""
    account = ctx["settings"].providers.get(provider)
    return account.min_poll_s() if account is not None else 0.0


def _overdue(ctx: WorkerContext, record: BatchRecord, now_ms: int) -> bool:
    """Whether a batch still running is past giving up on (:func:`scheduler.policy.overdue`)."""
    provider = ctx["settings"].providers.get(record.provider)
    if provider is None:
        return False
    grace_s = ctx["settings"].scheduler.overdue_grace_s
    return policy.overdue(record.submitted_ms, now_ms, provider.completion_window_s, grace_s)


async def _abandon(
    ctx: WorkerContext, batches: Batches, record: BatchRecord, code: str, message: str, now_ms: int
) -> PollOutcome:
    """Give up on a batch the provider lost or never finishes: ask it to cancel (best effort, so
    nothing more is billed), and send the jobs back to their lane, or on to sync."""
    adapter = ctx["adapters"].get(record.provider)
    if adapter is not None and record.provider_batch_id is not None and code == "batch_overdue":
        try:
            await adapter.cancel_batch(record.provider_batch_id)
        except ProviderError as exc:
            log.warning("batch.cancel_failed", batch_id=record.id, error=str(exc))
    reason = {"type": "batch_refused", "code": code, "message": message}
    await refuse(ctx, batches, record, reason, retriable=True, now_ms=now_ms)
    log.error("batch.abandoned", batch_id=record.id, lane=record.lane, code=code)
    return PollOutcome.ABANDONED


@summarised(tasks.POLL_BATCH)
@traces.batch_span("batch.poll")
async def poll_batch(ctx: WorkerContext, batch_id: str) -> PollOutcome:
    """Poll a batch once: record its status; when it ended, hand it to ingestion; else reschedule."""
    settings = ctx["settings"].scheduler
    batches, record = await bound_batch(ctx, batch_id)
    now_ms = await ctx["clock"].now_ms()
    if record is None:
        await ctx["redis"].zrem(keys.BATCHES_POLL, batch_id)
        return PollOutcome.MISSING
    if record.state == "ended":
        return await _hand_to_ingest(ctx, batches, record, now_ms)
    if record.state != "submitted" or record.provider_batch_id is None:
        await batches.update(batch_id, (record.state,), now_ms=now_ms, next_poll_ms="del")
        note(state=record.state)
        return PollOutcome.SKIPPED
    adapter = ctx["adapters"].get(record.provider)
    interval = safety_poll_s(
        max(policy.next_poll_s(record.poll_interval_s, settings), _poll_floor_s(ctx, record.provider)),
        ctx["settings"].providers.get(record.provider),
    )

    async def poll_again(**fields: Any) -> None:
        """Schedule the next poll ``interval`` from now (backing off), recording ``fields`` with it."""
        next_poll_ms = now_ms + int(interval * 1000)
        await batches.update(
            batch_id,
            ("submitted",),
            now_ms=now_ms,
            next_poll_ms=next_poll_ms,
            poll_interval_s=interval,
            **fields,
        )

    if adapter is None:
        await batches.update(
            batch_id, ("submitted",), now_ms=now_ms, next_poll_ms=now_ms + int(settings.poll_max_s * 1000)
        )
        return PollOutcome.NO_ADAPTER
    try:
        info = await adapter.get_batch(record.provider_batch_id)
    except ProviderError as exc:
        # The poll moves on either way, so the next one has a new due time (and a new task id).
        log.warning("batch.poll_failed", error=str(exc), not_found=isinstance(exc, ProviderNotFound))
        if isinstance(exc, ProviderNotFound) and not exc.retriable:
            return await _abandon(ctx, batches, record, "batch_lost", str(exc), now_ms)
        await poll_again()
        return PollOutcome.POLL_FAILED
    status = _status_fields(info)
    if not info.ended and _overdue(ctx, record, now_ms):
        return await _abandon(ctx, batches, record, "batch_overdue", "past the completion window", now_ms)
    if not info.ended:
        await poll_again(running_seen_ms=now_ms, **status)  # the turnaround sample is measured between polls
        note(status=info.status)
        return PollOutcome.RUNNING
    if info.status == "failed":
        reason = reason_of(info.errors, "batch_failed")
        retriable = reason["code"] in RETRIABLE_CODES
        await batches.update(batch_id, ("submitted",), now_ms=now_ms, **status)
        await refuse(ctx, batches, record, reason, retriable=retriable, now_ms=now_ms)
        await files.discard(ctx, record.provider, info.files, files.INPUT_ROLES)
        return PollOutcome.REFUSED
    ended_ms = int(info.ended_at * 1000) if info.ended_at else now_ms
    # Stay in the poll set until ingestion is enqueued: a crash in between is healed by the next poll.
    moved = await batches.update(
        batch_id,
        ("submitted",),
        now_ms=now_ms,
        to_state="ended",
        next_poll_ms=now_ms + int(settings.poll_initial_s * 1000),
        ended_ms=ended_ms,
        **status,
    )
    if moved.status == "ok" and record.submitted_ms is not None:
        # On our own clock, between the last poll that saw it running and this one: the provider's
        # end time has whole seconds and another clock, and can equal its creation time.
        running_seen = record.raw.get("running_seen_ms")
        seconds = observed_turnaround_s(
            record.submitted_ms, int(running_seen) if running_seen else None, now_ms
        )
        # A cancelled batch (its jobs all flipped, or its producer's) did not show its turnaround,
        # only that it took at least this long: counted as an end, it would teach the lane it is fast.
        if info.status != "cancelled":
            await batches.push_turnaround(record.lane, ended_ms, seconds, ctx["settings"].slo.history_size)
        log.info("batch.ended", status=info.status, turnaround_s=seconds)
    if moved.status == "ok":
        await files.discard(ctx, record.provider, info.files, files.INPUT_ROLES)
    return await _hand_to_ingest(ctx, batches, record, now_ms)


async def learn_end(ctx: WorkerContext, batches: Batches, record: BatchRecord) -> BatchRecord:
    """A batch a provider event marked ended has no poll's fields yet: read the provider's batch
    once, record its counts and files (so its output files can be deleted after ingestion) and
    delete its input file, as the poll that sees a batch end does."""
    adapter = ctx["adapters"].get(record.provider)
    if adapter is None or record.provider_batch_id is None or record.raw.get("end_read_ms"):
        return record
    try:
        info = await adapter.get_batch(record.provider_batch_id)
    except ProviderError as exc:  # ingestion reads the batch again and decides
        log.warning("batch.end_unread", error=str(exc))
        return record
    if not info.ended:  # the object lags the event: ingestion retries, and this read with it
        return record
    now_ms = await ctx["clock"].now_ms()
    await batches.update(record.id, ("ended",), now_ms=now_ms, end_read_ms=now_ms, **_status_fields(info))
    await files.discard(ctx, record.provider, info.files, files.INPUT_ROLES)
    return await batches.get(record.id) or record


def _status_fields(info: BatchInfo) -> dict[str, Any]:
    return {
        "status": info.status,
        "raw_status": info.raw_status,
        "total": info.total,
        "completed": info.completed,
        "failed": info.failed,
        **info.files,
    }


async def _hand_to_ingest(
    ctx: WorkerContext, batches: Batches, record: BatchRecord, now_ms: int
) -> PollOutcome:
    await tasks.enqueue(ctx["redis"], tasks.INGEST_BATCH, record.id, job_id=tasks.ingest_job_id(record.id))
    await batches.update(record.id, ("ended",), now_ms=now_ms, next_poll_ms="del")
    return PollOutcome.ENDED


@summarised(tasks.CANCEL_BATCH)
async def cancel_batch(ctx: WorkerContext, batch_id: str) -> CancelOutcome:
    """Ask the provider to cancel a batch in flight; polling then sees it end with partial results."""
    batches, record = await bound_batch(ctx, batch_id)
    if record is None:
        return CancelOutcome.MISSING
    if record.state != "submitted" or record.provider_batch_id is None:
        note(state=record.state)
        return CancelOutcome.SKIPPED
    adapter: ProviderAdapter | None = ctx["adapters"].get(record.provider)
    if adapter is None:
        return CancelOutcome.NO_ADAPTER
    info = await adapter.cancel_batch(record.provider_batch_id)
    now_ms = await ctx["clock"].now_ms()
    poll_s = ctx["settings"].scheduler.poll_initial_s
    await batches.update(
        batch_id,
        ("submitted",),
        now_ms=now_ms,
        next_poll_ms=now_ms + int(poll_s * 1000),
        poll_interval_s=poll_s,
        cancel_requested_ms=now_ms,
        **_status_fields(info),
    )
    log.info("batch.cancel_requested", status=info.status)
    return CancelOutcome.REQUESTED


@summarised(tasks.RECONCILE_BATCHES)
async def reconcile_batches(ctx: WorkerContext, now_ms: int) -> dict[str, int]:
    """Adopt or resubmit planned batches older than ``planned_timeout_s`` at ``now_ms``; find
    duplicates; retry pending file deletions; sweep jobs stranded in closed batches."""
    return await matching.reconcile(ctx, Batches(ctx["redis"]), now_ms)
