"""Provider file cleanup: batch data is deleted at the provider once batchshift needs it no more.

OpenAI keeps every uploaded input file and every output and error file until deleted, counts
them against the organisation's storage limit, and holds tenants' prompts and answers meanwhile;
Anthropic keeps an ended batch's requests and results for 29 days. So the input file goes once its
batch has ended (``providers.*.delete_input_files``), and the output and error files, or the ended
Anthropic batch, once ingested (``providers.*.delete_output_files``). A file to delete is
first added to ``keys.provider_files_pending`` and removed once the provider confirms, so a delete
that fails is retried by the next reconciliation; a failure is logged, never raised: cleanup never
blocks polling or ingestion.
"""

from __future__ import annotations

from collections.abc import Iterable

import structlog

from scheduler.ledger import keys
from scheduler.planning.batches import BatchRecord
from workers.context import WorkerContext
from workers.errors import ProviderError
from workers.providers.base import StoredDeleting

log = structlog.get_logger(__name__)

INPUT_ROLES = ("input_file_id",)
OUTPUT_ROLES = ("output_file_id", "error_file_id", "results_batch_id")


def _enabled(ctx: WorkerContext, provider: str, roles: tuple[str, ...]) -> bool:
    settings = ctx["settings"].providers.get(provider)
    if settings is None:
        return False
    return settings.delete_input_files if roles == INPUT_ROLES else settings.delete_output_files


async def discard(ctx: WorkerContext, provider: str, files: dict[str, str], roles: tuple[str, ...]) -> int:
    """Delete the files of ``roles`` among ``files`` (role → file id) if the provider's settings
    say so; returns how many were deleted now (the rest stay pending)."""
    adapter = ctx["adapters"].get(provider)
    wanted = [files[r] for r in roles if files.get(r)]
    if not wanted or not isinstance(adapter, StoredDeleting) or not _enabled(ctx, provider, roles):
        return 0
    await ctx["redis"].sadd(keys.provider_files_pending(provider), *wanted)
    return await _delete(ctx, adapter, wanted)


def files_of(record: BatchRecord) -> dict[str, str]:
    """The provider files the batch record names (written by each poll)."""
    return {role: record.raw[role] for role in INPUT_ROLES + OUTPUT_ROLES if record.raw.get(role)}


async def _delete(ctx: WorkerContext, adapter: StoredDeleting, file_ids: Iterable[str]) -> int:
    deleted = 0
    for file_id in file_ids:
        try:
            await adapter.delete_stored(file_id)
        except ProviderError as exc:
            log.warning("provider.file_delete_failed", provider=adapter.name, file_id=file_id, error=str(exc))
            continue
        await ctx["redis"].srem(keys.provider_files_pending(adapter.name), file_id)  # type: ignore[misc]
        deleted += 1
    return deleted


async def retry_pending(ctx: WorkerContext, limit: int = 1000) -> int:
    """Try every pending deletion again (reconciliation); returns how many went through."""
    deleted = 0
    for name, adapter in ctx["adapters"].items():
        if not isinstance(adapter, StoredDeleting):
            continue
        pending = await ctx["redis"].srandmember(keys.provider_files_pending(name), limit)  # type: ignore[misc]
        if pending:
            deleted += await _delete(ctx, adapter, [f.decode() for f in pending])
    return deleted
