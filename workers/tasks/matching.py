"""Reconciliation: finding the provider batch a planned batch of ours became, and adopting it.

A create call that may have happened (a crash after the provider accepted it, an unknown outcome)
leaves our batch ``planned`` with ``create_started_ms`` set. We then list the provider's recent
batches for candidates: on OpenAI, the one whose metadata carries our batch id; on Anthropic,
which keeps no metadata, unclaimed batches created between our create call and now with no more
requests than we reserved (the closest count first). A candidate is adopted (its id recorded,
``submitted``) only once verified: its model is ours and every request's custom id is one of our
batch's jobs (OpenAI: its input file; Anthropic: its results, readable once it ended). A foreign
batch of the same size and creation time on the same account is thus never adopted; a candidate
not readable yet (an Anthropic batch still running) holds the batch planned, neither adopted nor
resubmitted, until it can be read. Not found:
resubmit, up to ``scheduler.max_attempts``. A batch is touched only under its submission lease
(:mod:`workers.tasks.lease`): never while a submission of it is alive or its create may still
answer; then the jobs go back to their lane. A second
provider batch carrying one of our ids (two creates that both happened) becomes a duplicate
record, polled and ingested under its own identity so its spend is counted.
"""

from __future__ import annotations

from typing import Literal

import structlog

from scheduler.compat.intake import BatchIntake
from scheduler.ledger import keys, tasks
from scheduler.planning.batches import Batches, BatchRecord
from workers.context import WorkerContext
from workers.errors import BatchNotEnded, ProviderError, ProviderNotFound
from workers.providers.base import BATCH_ID_METADATA_KEY, BatchInfo, ProviderAdapter
from workers.tasks import files, sweep
from workers.tasks.lease import SubmitLease
from workers.tasks.refusals import refuse

log = structlog.get_logger(__name__)

# Clock skew allowed between us and the provider when matching Anthropic batches by creation time.
CREATED_SLACK_MS = 5_000
LIST_LIMIT = 100  # recent provider batches examined per reconciliation
Verdict = Literal["ours", "foreign", "unknown"]


def candidates(
    record: BatchRecord, listing: list[BatchInfo], claimed: dict[str, str], now_ms: int
) -> list[BatchInfo]:
    """The provider batches ``record`` may have become, best first (to be verified by :func:`verify`).

    A batch tagged with our id comes first and alone; untagged ones (Anthropic keeps no metadata)
    qualify by creation time and size, the closest size first. Batches tagged with another id, or
    claimed by another batch of ours, never qualify.
    """
    started = int(record.raw.get("create_started_ms") or record.planned_ms)
    found = []
    for info in listing:
        owner = claimed.get(info.provider_batch_id)
        if owner is not None and owner != record.id:
            continue
        tagged = info.metadata.get(BATCH_ID_METADATA_KEY)
        if tagged is not None:
            if tagged == record.id:
                return [info]
            continue
        created_ms = int((info.created_at or 0) * 1000)
        if not started - CREATED_SLACK_MS <= created_ms <= now_ms + CREATED_SLACK_MS:
            continue
        if 0 < info.total <= record.requests or (info.total == 0 and not info.ended):
            found.append(info)
    return sorted(found, key=lambda i: record.requests - i.total if i.total else record.requests)


def model_matches(ours: str, theirs: str | None) -> bool:
    """Whether the provider's model name is ours (OpenAI may name the dated version: ``gpt-x-2025-08-07``)."""
    return theirs is None or theirs == ours or theirs.startswith(ours + "-")


async def verify(
    ctx: WorkerContext, adapter: ProviderAdapter, record: BatchRecord, info: BatchInfo
) -> Verdict:
    """Whether provider batch ``info`` is ``record``'s: its model is ours and every request's
    custom id is one of our batch's jobs. ``unknown`` when the provider does not show the ids yet
    (an Anthropic batch still running): then it is neither adopted nor resubmitted over."""
    if not model_matches(record.model, info.model):
        return "foreign"
    redis = ctx["redis"]
    seen = 0
    try:
        async for block in adapter.request_ids(info):
            if not block:
                continue
            if not all(model_matches(record.model, r.model) for r in block):
                return "foreign"
            members = await redis.smismember(keys.batch_jobs(record.id), [r.custom_id for r in block])  # type: ignore[misc]
            if not all(members):
                return "foreign"
            seen += len(block)
    except BatchNotEnded:
        return "unknown"
    except ProviderNotFound:
        # The ids are gone (an input file deleted): only our id in the batch's metadata can tell.
        return "ours" if info.metadata.get(BATCH_ID_METADATA_KEY) == record.id else "unknown"
    return "ours" if seen else "unknown"


async def adopt(
    ctx: WorkerContext, batches: Batches, adapter: ProviderAdapter, record: BatchRecord, now_ms: int
) -> Verdict:
    """Look for ``record``'s provider batch and record it: ``ours`` when adopted, ``unknown`` when a
    candidate cannot be verified yet, ``foreign`` when none is ours."""
    listing = await adapter.list_batches(LIST_LIMIT)
    claimed = await batches.claimed(record.provider)
    pending = False
    for info in candidates(record, listing, claimed, max(now_ms, await ctx["clock"].now_ms())):
        verdict = await verify(ctx, adapter, record, info)
        log.info("batch.match", batch_id=record.id, provider_batch_id=info.provider_batch_id, verdict=verdict)
        if verdict == "unknown":
            pending = True
            continue
        if verdict == "foreign":
            continue
        outcome = await batches.mark_submitted(
            record.id,
            record.provider,
            info.provider_batch_id,
            now_ms=await ctx["clock"].now_ms(),
            poll_s=ctx["settings"].scheduler.poll_initial_s,
            how="adopted",
        )
        log.info(
            "batch.adopted", batch_id=record.id, provider_batch_id=info.provider_batch_id, outcome=outcome
        )
        if outcome == "ok":
            return "ours"
    return "unknown" if pending else "foreign"


async def reconcile(ctx: WorkerContext, batches: Batches, now_ms: int) -> dict[str, int]:
    """Heal stale planned batches (adopt, resubmit or give up) and record duplicates; returns counts."""
    settings = ctx["settings"].scheduler
    counts = {"adopted": 0, "resubmitted": 0, "gave_up": 0, "duplicates": 0, "leased": 0, "unverified": 0}
    cutoff = now_ms - int(settings.planned_timeout_s * 1000)
    for batch_id in await batches.planned_before(cutoff):
        record = await batches.get(batch_id)
        adapter = ctx["adapters"].get(record.provider) if record else None
        if record is None or record.state != "planned" or adapter is None:
            continue
        # Only a batch nobody is submitting: its lease lapsed and no create of it may still answer.
        # Taken in the name of the submission that would follow, so that task holds it.
        lease = SubmitLease(
            batches,
            ctx["settings"],
            batch_id,
            tasks.submit_job_id(batch_id, record.attempts + 1),
            ctx["clock"],
        )
        taken = await lease.acquire(now_ms)
        if taken != "ok":
            counts["leased"] += 1
            log.info("batch.reconcile_skipped", batch_id=batch_id, lease=taken)
            continue
        if record.raw.get("create_started_ms"):
            try:
                verdict = await adopt(ctx, batches, adapter, record, now_ms)
                if verdict == "ours":
                    counts["adopted"] += 1
                    continue
                if verdict == "unknown":  # a candidate we cannot read yet: neither adopt nor create
                    counts["unverified"] += 1
                    await lease.release()
                    continue
            except ProviderError as exc:
                log.warning("batch.reconcile_failed", batch_id=batch_id, error=str(exc))
                await lease.release()
                continue  # cannot tell whether it exists: never resubmit blind
        moved = await batches.update(
            batch_id,
            ("planned",),
            now_ms=now_ms,
            to_state="planned",
            increment="attempts",
            resubmitted_ms=now_ms,
        )
        if moved.status != "ok" or moved.incremented is None:
            continue
        if moved.incremented > settings.max_attempts:
            reason = {
                "type": "batch_refused",
                "code": "submission_failed",
                "message": "batch could not be submitted",
            }
            await refuse(ctx, batches, record, reason, retriable=True, now_ms=now_ms)
            counts["gave_up"] += 1
            continue
        if moved.incremented != record.attempts + 1:  # another pass counted too: let its task submit
            await lease.release()
            continue
        await tasks.enqueue(
            ctx["redis"],
            tasks.SUBMIT_BATCH,
            batch_id,
            job_id=tasks.submit_job_id(batch_id, moved.incremented),
        )
        counts["resubmitted"] += 1
    counts["duplicates"] = await find_duplicates(ctx, batches)
    counts["files_deleted"] = await files.retry_pending(ctx)
    counts["stranded"] = await sweep.sweep_stranded(ctx, now_ms)
    intake = BatchIntake(ctx["settings"], ctx["redis"], ctx["ledger"])
    counts["stale_client_batches"] = await intake.cancel_stale_creates(now_ms)
    log.info("batch.reconciled", **counts)
    return counts


async def find_duplicates(ctx: WorkerContext, batches: Batches) -> int:
    """Record every unclaimed provider batch tagged with the id of a batch already submitted elsewhere."""
    found = 0
    poll_s = ctx["settings"].scheduler.poll_initial_s
    for name, adapter in ctx["adapters"].items():
        try:
            listing = await adapter.list_batches(LIST_LIMIT)
        except ProviderError as exc:
            log.warning("provider.list_failed", provider=name, error=str(exc))
            continue
        claimed = await batches.claimed(name)
        for info in listing:
            ours = info.metadata.get(BATCH_ID_METADATA_KEY)
            if ours is None or info.provider_batch_id in claimed:
                continue
            record = await batches.get(ours)
            if (
                record is None
                or record.provider != name
                or record.provider_batch_id in (None, info.provider_batch_id)
            ):
                continue
            try:
                if await verify(ctx, adapter, record, info) != "ours":
                    continue  # tagged with our id but not our requests (or not readable yet)
            except ProviderError as exc:
                log.warning("batch.verify_failed", provider_batch_id=info.provider_batch_id, error=str(exc))
                continue
            duplicate = await batches.record_duplicate(
                record.id, name, info.provider_batch_id, now_ms=await ctx["clock"].now_ms(), poll_s=poll_s
            )
            if duplicate is not None:
                found += 1
                log.warning(
                    "batch.duplicate",
                    batch_id=record.id,
                    duplicate_id=duplicate,
                    provider_batch_id=info.provider_batch_id,
                )
    return found
