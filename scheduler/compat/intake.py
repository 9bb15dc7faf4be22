"""Creating a client batch: check its lines and turn them into jobs, record the batch, then enqueue
the jobs or fail it.

The record exists (``validating``) before the first job is enqueued, so a job that ends at once
already counts on it; the batch starts once every line is a job or refused.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

import structlog
from redis.asyncio import Redis

from config.settings import Settings
from scheduler.compat import lines as line_checks
from scheduler.compat.batches import Api, ClientBatch, ClientBatches, window_seconds
from scheduler.compat.files import ClientFiles
from scheduler.costs.admission import AdmissionGate
from scheduler.errors import BatchshiftError, IllegalTransition, InvalidRequest
from scheduler.intake import ENDPOINTS, MAX_URL, check_url
from scheduler.ledger import ids
from scheduler.ledger.jobs import NewJob
from scheduler.ledger.ledger import Ledger

log = structlog.get_logger(__name__)

ANTHROPIC_ENDPOINT: Final = "/v1/messages"
OPENAI_ENDPOINTS: Final = ENDPOINTS["openai"]  # what an OpenAI batch's ``endpoint`` may name
MAX_METADATA_PAIRS: Final = 16
# Stale creates cancelled per reconcile pass; the rest wait for the next one.
STALE_SWEEP: Final = 100


def check_metadata(metadata: object) -> dict[str, str] | None:
    """OpenAI's metadata rule: up to 16 string pairs, keys up to 64 and values up to 512 characters."""
    if metadata is None:
        return None
    if not (
        isinstance(metadata, dict)
        and len(metadata) <= MAX_METADATA_PAIRS
        and all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512
            for k, v in metadata.items()
        )
    ):
        raise InvalidRequest(
            "Invalid 'metadata': up to 16 string pairs, keys <= 64 and values <= 512 characters.", "metadata"
        )
    return metadata


def draft(
    api: Api,
    tenant: str,
    *,
    endpoint: str,
    input_file_id: str,
    window: str,
    window_s: float,
    metadata: dict[str, str] | None,
    total: int,
    now_ms: int,
) -> ClientBatch:
    """A new batch, not stored yet: what its lines' jobs are made from."""
    return ClientBatch(
        id=ids.new_id("batch" if api == "openai" else "msgbatch", now_ms),
        api=api,
        tenant=tenant,
        endpoint=endpoint,
        input_file_id=input_file_id,
        window=window,
        created_ms=now_ms,
        expires_ms=now_ms + int(window_s * 1000),
        state="validating",
        total=total,
        ended=0,
        succeeded=0,
        failed=0,
        cancelled=0,
        ended_ms=None,
        in_progress_ms=None,
        cancelling_ms=None,
        failed_ms=None,
        model="",
        metadata=metadata,
        errors=None,
    )


class BatchIntake:
    """Creates client batches for one process (the API's)."""

    def __init__(self, settings: Settings, redis: Redis, ledger: Ledger) -> None:
        self.settings = settings
        self.redis = redis
        self.ledger = ledger
        self.batches = ClientBatches(redis)
        self.files = ClientFiles(redis)

    async def _record(self, batch: ClientBatch) -> None:
        await self.batches.open(
            batch.id,
            api=batch.api,
            tenant=batch.tenant,
            endpoint=batch.endpoint,
            input_file_id=batch.input_file_id,
            window=batch.window,
            created_ms=batch.created_ms,
            expires_ms=batch.expires_ms,
            metadata=batch.metadata,
            total=batch.total,
            callback_url=batch.callback_url,
        )

    async def _reread(self, batch: ClientBatch) -> ClientBatch:
        found = await self.batches.get(batch.tenant, batch.id)
        assert found is not None
        return found

    async def openai(
        self,
        tenant: str,
        *,
        input_file_id: str,
        endpoint: str,
        window: object,
        metadata: dict[str, str] | None,
        now_ms: int,
        callback_url: object = None,
    ) -> ClientBatch:
        """An OpenAI batch from an uploaded file (checked by the caller to be the tenant's): one that
        fails validation is recorded ``failed`` with its line errors, as OpenAI reports them.

        The file is read twice, a chunk of lines at a time, so a 200 MB file is never held whole:
        once to check every line (intake's own checks included), once to enqueue them.
        """
        window_s = window_seconds(window, self.settings.limits.max_deadline_horizon_s)
        callback = self.callback(tenant, callback_url)
        batch = draft(
            "openai",
            tenant,
            endpoint=endpoint,
            input_file_id=input_file_id,
            window=str(window),
            window_s=window_s,
            metadata=metadata,
            total=0,
            now_ms=now_ms,
        )
        batch.callback_url = callback
        errors = line_checks.LineErrors()
        async for chunk in line_checks.chunks(self._read(batch, errors)):
            batch.total += len(chunk)
            if not errors.count:
                line_checks.jobs_for(chunk, batch, self.settings, errors, now_ms=now_ms)
        if errors.count:
            batch.total = 0  # as OpenAI counts a batch that failed validation: nothing ran
        await self._record(batch)
        if errors.count:
            await self.batches.fail(batch.id, now_ms, errors.data)
            log.info("client_batch.failed", client_batch=batch.id, tenant=tenant, line_errors=errors.count)
            return await self._reread(batch)
        ignored = line_checks.LineErrors()  # the same lines passed the first reading
        lines = line_checks.chunks(self._read(batch, ignored))
        await self._enqueue(
            batch,
            (line_checks.jobs_for(c, batch, self.settings, ignored, now_ms=now_ms) async for c in lines),
            now_ms,
        )
        return await self._reread(batch)

    def _read(self, batch: ClientBatch, errors: line_checks.LineErrors) -> AsyncIterator[line_checks.Line]:
        return line_checks.openai_lines(
            self.files.lines(batch.input_file_id), batch.endpoint, errors, self.settings.compat.max_requests
        )

    async def _enqueue(
        self, batch: ClientBatch, job_chunks: AsyncIterator[list[NewJob]], now_ms: int
    ) -> None:
        """Enqueue the lines' jobs chunk by chunk, recording their entries in order, then start the
        batch. Lines missing from a second reading (the file deleted meanwhile) count as refused."""
        gate = AdmissionGate(self.settings, self.redis)
        refused = lines = 0
        models: set[str] = set()
        async for jobs in job_chunks:
            if await self.batches.state_of(batch.id) != "validating":
                # Judged a dead create and cancelled (by its owner or the reconcile pass) while
                # this one was slow: enqueue no more of it.
                raise IllegalTransition(
                    f"Batch '{batch.id}' was cancelled while it was created (after compat.stale_create_s)."
                )
            # Listed before they exist: a create that dies leaves every job it made findable, so
            # cancelling the stale batch cancels them all (:meth:`cancel`).
            await self.batches.add_lines(batch.id, [job.id for job in jobs])
            entries, chunk_refused = await line_checks.enqueue_chunk(jobs, self.ledger, gate, self.settings)
            await self.batches.set_lines(
                batch.id,
                {lines + i: e for i, (e, job) in enumerate(zip(entries, jobs, strict=True)) if e != job.id},
            )
            refused += chunk_refused
            lines += len(entries)
            models.update(job.model for job in jobs)
        if lines < batch.total:
            gone = BatchshiftError("the input file was deleted while the batch was created")
            missing = [line_checks.refused_entry("", gone)] * (batch.total - lines)
            await self.batches.add_lines(batch.id, missing)
            refused += len(missing)
        await self.batches.start(batch.id, now_ms, refused=refused, model=",".join(sorted(models)))
        log.info(
            "client_batch.started",
            client_batch=batch.id,
            tenant=batch.tenant,
            api=batch.api,
            lines=batch.total,
            refused=refused,
        )

    def callback(self, tenant: str, url: object) -> str | None:
        """A batch's ``callback_url`` (a batchshift extension): an http(s) URL, and the tenant must
        have a signing secret, as for a job's callback."""
        if url is None:
            return None
        if not isinstance(url, str) or len(url) > MAX_URL:
            raise InvalidRequest(
                f"callback_url must be a URL string of at most {MAX_URL} characters", "callback_url"
            )
        check_url(url, "callback_url")
        tenant_settings = self.settings.tenants.get(tenant)
        if tenant_settings is None or not tenant_settings.webhook_secrets:
            raise InvalidRequest(
                "callback_url needs a webhook signing secret: the tenant has no webhook_secrets configured",
                "callback_url",
            )
        return url

    async def anthropic(
        self, tenant: str, requests: object, *, now_ms: int, callback_url: object = None
    ) -> ClientBatch:
        """An Anthropic Message Batch from its inline requests; an invalid request refuses the create
        (Anthropic checks them at once), naming it."""
        errors = line_checks.LineErrors()
        lines = line_checks.anthropic_lines(requests, errors, self.settings.compat.max_requests)
        window_s = self.settings.compat.anthropic_window_s
        batch = draft(
            "anthropic",
            tenant,
            endpoint=ANTHROPIC_ENDPOINT,
            input_file_id="",
            window=f"{int(window_s)}s",
            window_s=window_s,
            metadata=None,
            total=len(lines),
            now_ms=now_ms,
        )
        batch.callback_url = self.callback(tenant, callback_url)
        jobs = (
            [] if errors.count else line_checks.jobs_for(lines, batch, self.settings, errors, now_ms=now_ms)
        )
        if errors.count:
            first = errors.data[0]
            param = first["param"] or "requests"
            if param.startswith("requests"):
                raise InvalidRequest(first["message"], param)
            where = f"requests.{first['line']}.params"
            raise InvalidRequest(f"{where}: {first['message']}", where)
        await self._record(batch)
        await self._enqueue(batch, _in_chunks(jobs), now_ms)
        return await self._reread(batch)

    async def cancel(self, batch: ClientBatch, now_ms: int) -> ClientBatch:
        """in_progress → cancelling, then every line's live job is cancelled (each its own guarded
        step; a job that ends meanwhile keeps its end). The batch is cancelled once all have ended.
        A batch over (completed, failed, expired, cancelled) refuses, as OpenAI's does (409); one
        still ``cancelling`` (a second cancel, or a retry of one that died midway) is cancelled
        again, line by line, and answered as it stands."""
        status = batch.status(now_ms)
        if status in ("completed", "failed", "expired", "cancelled"):
            raise IllegalTransition(f"Cannot cancel a batch with status '{status}'.")
        if batch.state == "cancelling":
            abandoned = batch.in_progress_ms is None  # never started: its create died
        elif batch.state == "validating":  # a create that died: lines partly enqueued, partly not
            if now_ms - batch.created_ms < self.settings.compat.stale_create_s * 1000:
                raise IllegalTransition("Cannot cancel a batch with status 'validating'.")
            await self.batches.abandon(batch.id, now_ms)
            abandoned = True
        else:
            await self.batches.request_cancel(batch.id, now_ms)
            abandoned = False
        start = 0
        while entries := await self.batches.line_entries(batch.id, start, line_checks.ENQUEUE_CHUNK):
            await self.ledger.cancel_many([e for e in entries if not e.startswith("!")], now_ms)
            start += len(entries)
        if abandoned:  # every job it made is ended now; the lines it never made count as cancelled
            await self.batches.settle(batch.id, now_ms)
        log.info("client_batch.cancelled", client_batch=batch.id, tenant=batch.tenant, abandoned=abandoned)
        return await self._reread(batch)

    async def cancel_stale_creates(self, now_ms: int, limit: int = STALE_SWEEP) -> int:
        """Cancel the batches still ``validating`` past ``compat.stale_create_s``: creates that died
        with their process. Each is cancelled as its owner's cancel would (:meth:`cancel`: one guarded
        step out of ``validating``, its enqueued lines cancelled, the rest counted cancelled), so the
        client sees it end ``cancelled`` without acting. Returns how many."""
        cutoff = now_ms - int(self.settings.compat.stale_create_s * 1000)
        cancelled = 0
        for batch_id in await self.batches.validating_before(cutoff, limit):
            batch = await self.batches.find(batch_id)
            if batch is None or batch.state != "validating":
                await self.batches.unlist_validating(batch_id)
                continue
            try:
                await self.cancel(batch, now_ms)
            except IllegalTransition:  # its create finished, or its owner cancelled it, meanwhile
                continue
            cancelled += 1
            log.warning("client_batch.stale_create_cancelled", client_batch=batch_id, tenant=batch.tenant)
        return cancelled


async def _in_chunks(jobs: list[NewJob]) -> AsyncIterator[list[NewJob]]:
    for start in range(0, len(jobs), line_checks.ENQUEUE_CHUNK):
        yield jobs[start : start + line_checks.ENQUEUE_CHUNK]
