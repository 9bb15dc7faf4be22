"""Reconciliation: finding the provider batch a planned batch of ours became, and adopting it.

A create call that may have happened (a crash after the provider accepted it, an unknown outcome)
leaves our batch ``planned`` with ``create_started_ms`` set. We then list the provider's recent
batches: on OpenAI, the one whose metadata carries our batch id; on Anthropic, which keeps no
metadata, an unclaimed batch created between our create call and now with no more requests than
we reserved (the closest count wins). Found: adopt it (record its id, ``submitted``). Not found:
resubmit, up to ``scheduler.max_attempts``. A batch is touched only under its submission lease
(:mod:`workers.tasks.lease`): never while a submission of it is alive or its create may still
answer; then the jobs go back to their lane. A second
provider batch carrying one of our ids (two creates that both happened) becomes a duplicate
record, polled and ingested under its own identity so its spend is counted.
"""

from __future__ import annotations

import time

import structlog

from scheduler import tasks
from scheduler.batches import Batches, BatchRecord
from workers.context import WorkerContext
from workers.errors import ProviderError
from workers.providers.base import BATCH_ID_METADATA_KEY, BatchInfo, ProviderAdapter
from workers.tasks import files
from workers.tasks.lease import SubmitLease
from workers.tasks.refusals import refuse

log = structlog.get_logger(__name__)

# Clock skew allowed between us and the provider when matching Anthropic batches by creation time.
CREATED_SLACK_MS = 5_000
LIST_LIMIT = 100  # recent provider batches examined per reconciliation


def find(
    record: BatchRecord, listing: list[BatchInfo], claimed: dict[str, str], now_ms: int
) -> BatchInfo | None:
    """The provider batch ``record`` became, among ``listing``; None when there is none."""
    started = int(record.raw.get("create_started_ms") or record.planned_ms)
    candidates = []
    for info in listing:
        owner = claimed.get(info.provider_batch_id)
        if owner is not None and owner != record.id:
            continue
        tagged = info.metadata.get(BATCH_ID_METADATA_KEY)
        if tagged is not None:
            if tagged == record.id:
                return info
            continue
        created_ms = int((info.created_at or 0) * 1000)
        if not started - CREATED_SLACK_MS <= created_ms <= now_ms + CREATED_SLACK_MS:
            continue
        if 0 < info.total <= record.requests:
            candidates.append(info)
    if not candidates:
        return None
    return min(candidates, key=lambda i: record.requests - i.total)


async def adopt(
    ctx: WorkerContext, batches: Batches, adapter: ProviderAdapter, record: BatchRecord, now_ms: int
) -> bool:
    """Look for ``record``'s provider batch and record it; True when adopted."""
    listing = await adapter.list_batches(LIST_LIMIT)
    claimed = await batches.claimed(record.provider)
    found = find(record, listing, claimed, max(now_ms, _wall_ms()))
    if found is None:
        return False
    outcome = await batches.mark_submitted(
        record.id,
        record.provider,
        found.provider_batch_id,
        now_ms=_wall_ms(),
        poll_s=ctx["settings"].scheduler.poll_initial_s,
        how="adopted",
    )
    log.info("batch.adopted", batch_id=record.id, provider_batch_id=found.provider_batch_id, outcome=outcome)
    return outcome == "ok"


def _wall_ms() -> int:
    return int(time.time() * 1000)


async def reconcile(ctx: WorkerContext, batches: Batches, now_ms: int) -> dict[str, int]:
    """Heal stale planned batches (adopt, resubmit or give up) and record duplicates; returns counts."""
    settings = ctx["settings"].scheduler
    counts = {"adopted": 0, "resubmitted": 0, "gave_up": 0, "duplicates": 0, "leased": 0}
    cutoff = now_ms - int(settings.planned_timeout_s * 1000)
    for batch_id in await batches.planned_before(cutoff):
        record = await batches.get(batch_id)
        adapter = ctx["adapters"].get(record.provider) if record else None
        if record is None or record.state != "planned" or adapter is None:
            continue
        # Only a batch nobody is submitting: its lease lapsed and no create of it may still answer.
        # Taken in the name of the submission that would follow, so that task holds it.
        lease = SubmitLease(
            batches, ctx["settings"], batch_id, tasks.submit_job_id(batch_id, record.attempts + 1)
        )
        taken = await lease.acquire(now_ms)
        if taken != "ok":
            counts["leased"] += 1
            log.info("batch.reconcile_skipped", batch_id=batch_id, lease=taken)
            continue
        if record.raw.get("create_started_ms"):
            try:
                if await adopt(ctx, batches, adapter, record, now_ms):
                    counts["adopted"] += 1
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
            duplicate = await batches.record_duplicate(
                record.id, name, info.provider_batch_id, now_ms=_wall_ms(), poll_s=poll_s
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
