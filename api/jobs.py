"""The /v1/jobs routes: enqueue (one or bulk), read (with a long poll), list, cancel.

Bodies are read under the byte limit and parsed with orjson; scheduler.intake validates them
into NewJobs; the ledger stores them, each judged alone (bulk: a chunk of jobs per script call). A tenant sees
only its own jobs: another tenant's job answers 404, as if it did not exist.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Depends, Header, Query, Request
from redis.exceptions import ResponseError
from starlette.datastructures import State

from api.auth import tenant
from api.body import read_json
from api.errors import error_body, store_unavailable
from api.responses import JsonResponse
from api.schemas import (
    BulkRequest,
    BulkResponse,
    ErrorResponse,
    JobList,
    JobRequest,
    JobView,
    request_body,
)
from api.watcher import JobWatcher
from config.settings import Settings
from config.tracing import Span, Tracing, phase
from scheduler.costs.admission import AdmissionGate
from scheduler.errors import BatchshiftError, IdempotencyConflict, InvalidRequest, NotFound, PayloadTooLarge
from scheduler.intake import admit, refusal, validate
from scheduler.ledger.group_enqueue import GroupEnqueue
from scheduler.ledger.jobs import JobRecord, NewJob, iso
from scheduler.ledger.ledger import EnqueueOutcome, Ledger

log = structlog.get_logger(__name__)
# The stdlib logger's level check, as structlog's filter_by_level makes it, without building the event
# first: the single enqueue's debug line cost 3% of its server time while filtered out.
_debug_enabled = logging.getLogger(__name__).isEnabledFor

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

# A bulk request may be this many times max_body_bytes in all; each item's body still obeys
# max_body_bytes. 64 MiB at the default: 10,000 items of about 6 KiB each.
BULK_BODY_FACTOR = 64

_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 409, 413, 422)
}

Tenant = Annotated[str, Depends(tenant)]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _ledger(request: Request) -> Ledger:
    ledger: Ledger = request.app.state.ledger
    return ledger


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def created_view(job: NewJob, attached_to: str | None = None) -> dict[str, Any]:
    """The view of a just-created job (``JobRecord.view`` of its record), built without reading it back
    or building the record: bulk intake answers a thousand of these per request. ``attached_to``: the
    identical job it follows, when deduplication attached it; it then waits ``queued``."""
    state = "queued" if attached_to else job.state
    return {
        "id": job.id,
        "status": state,
        "route": "sync" if state == "sync" else None,
        "provider": job.provider,
        "endpoint": job.endpoint,
        "model": job.model,
        "lane": job.lane,
        "deadline": _iso(job.deadline_ms),
        "created_at": _iso(job.created_ms),
        "completed_at": None,
        "tags": job.tags,
        "callback_url": job.callback_url,
        "attempts": 0,
        "result": None,
        "error": None,
        "usage": None,
        "cost": None,
        "deduplicated_with": attached_to,
    }


# A bulk request's jobs share their creation time and mostly their deadlines: each is formatted once.
_iso = functools.lru_cache(maxsize=1024)(iso)


async def _owned(ledger: Ledger, tenant_name: str, job_id: str) -> JobRecord:
    """The tenant's job, or NotFound (also for another tenant's job: existence is not revealed)."""
    record = await ledger.get_view(job_id) if _JOB_ID.match(job_id) else None
    if record is None or record.tenant != tenant_name:
        raise NotFound(f"no job {job_id}", "id")
    return record


async def _admitted(job: NewJob, gate: AdmissionGate, ledger: Ledger) -> str | None:
    """Run admission; when it refuses a retry of a job already stored, the stored job's id instead."""
    try:
        await admit(job, gate)
    except BatchshiftError:
        prior = await ledger.prior_job(job)
        if prior is None:
            raise
        return prior
    return None


def _conflict(job: NewJob, outcome: EnqueueOutcome) -> IdempotencyConflict:
    return IdempotencyConflict(
        f"idempotency_key {job.idempotency_key!r} was used for a different request (job {outcome.job_id})",
        "idempotency_key",
    )


@router.post(
    "",
    status_code=202,
    summary="Enqueue a job",
    responses={202: {"model": JobView}, **_ERRORS},
    openapi_extra=request_body(JobRequest),
)
async def enqueue(
    request: Request,
    tenant_name: Tenant,
    idempotency_key: Annotated[str | None, Header(description="Same key, same request: same job.")] = None,
) -> JsonResponse:
    """Validate and store one job; a repeat with the same idempotency key answers the first job.

    The app serves this operation in api/enqueue_path.py, ahead of FastAPI's routing (the hot path);
    this declaration documents it and answers when that middleware is not installed.
    """
    limit = _settings(request).limits.max_body_bytes
    view = await enqueue_one(
        request.app.state,
        tenant_name,
        idempotency_key,
        lambda: read_json(request, limit),
        _request_trace(request),
    )
    return JsonResponse(view, status_code=202)


@dataclass(frozen=True, slots=True)
class IntakeTrace:
    """What the intake span reads of a request: its path and the producer's trace headers."""

    path: str
    traceparent: str | None
    tracestate: str | None


async def enqueue_one(
    state: State,
    tenant_name: str,
    idempotency_key: str | None,
    read_body: Callable[[], Awaitable[Any]],
    trace: IntakeTrace,
) -> dict[str, Any]:
    """Read, validate and store one job; its view (answered with 202). Errors are raised."""
    tracing: Tracing = state.tracing
    if not tracing.enabled:  # the hot path pays this one check
        return await _enqueue(state, tenant_name, idempotency_key, await read_body(), None)
    with _intake_span(tracing, trace, tenant_name) as span:
        return await _enqueue(state, tenant_name, idempotency_key, await read_body(), span)


def _intake_span(tracing: Tracing, trace: IntakeTrace, tenant_name: str) -> AbstractContextManager[Span]:
    """The intake span: a child of the producer's ``traceparent`` when it sent one, else a new trace."""
    return tracing.span(
        "job.intake",
        parent=trace.traceparent,
        tracestate=trace.tracestate,
        kind="server",
        attributes={"http.route": trace.path, "batchshift.tenant": tenant_name},
    )


def _request_trace(request: Request) -> IntakeTrace:
    return IntakeTrace(
        request.url.path, request.headers.get("traceparent"), request.headers.get("tracestate")
    )


def _traced(job: NewJob, context: dict[str, str]) -> None:
    """Store the intake span's context with the job: its later spans, in any process, continue it."""
    job.traceparent = context.get("traceparent", "")
    job.tracestate = context.get("tracestate", "")


async def _enqueue(
    state: State, tenant_name: str, idempotency_key: str | None, raw: Any, span: Span | None
) -> dict[str, Any]:
    settings: Settings = state.settings
    ledger: Ledger = state.ledger
    with phase("job.validate"):
        job = validate(
            raw, tenant=tenant_name, now_ms=now_ms(), settings=settings, idempotency_header=idempotency_key
        )
    if span is not None:
        _traced(job, span.headers())
        span.set(**{"batchshift.job_id": job.id, "batchshift.lane": job.lane})
    with phase("job.admit"):
        prior = await _admitted(job, AdmissionGate(settings, state.redis), ledger)
    enqueues: GroupEnqueue = state.enqueues
    with phase("job.store"):
        outcome = EnqueueOutcome("existing", prior) if prior else await enqueues.enqueue(job)
    if (refused := refusal(job, outcome, settings)) is not None:
        raise refused
    if outcome.status == "conflict":
        raise _conflict(job, outcome)
    if outcome.status == "existing":
        record = await _owned(ledger, tenant_name, outcome.job_id)
        return record.view(await ledger.result(record.id))
    if _debug_enabled(logging.DEBUG):
        log.debug("job.enqueued", job_id=job.id, lane=job.lane, tenant=tenant_name, state=job.state)
    return created_view(job, outcome.attached_to)


@router.post(
    "/bulk",
    summary="Enqueue many jobs",
    responses={200: {"model": BulkResponse}, **_ERRORS},
    openapi_extra=request_body(BulkRequest),
)
async def enqueue_bulk(request: Request, tenant_name: Tenant) -> JsonResponse:
    """One entry per item, in order: the job view, or the error that item alone got."""
    tracing: Tracing = request.app.state.tracing
    if not tracing.enabled:
        return await _enqueue_bulk(request, tenant_name, None)
    with _intake_span(tracing, _request_trace(request), tenant_name) as span:
        return await _enqueue_bulk(request, tenant_name, span)


async def _enqueue_bulk(request: Request, tenant_name: str, span: Span | None) -> JsonResponse:
    """Every item of one bulk request joins the request's trace (its ``traceparent``, if any)."""
    settings, ledger = _settings(request), _ledger(request)
    if request.headers.get("idempotency-key") is not None:
        raise InvalidRequest("bulk requests take idempotency_key per item, not the header", "idempotency_key")
    raw = await read_json(request, settings.limits.max_body_bytes * BULK_BODY_FACTOR)
    if not isinstance(raw, dict) or not isinstance(raw.get("jobs"), list):
        raise InvalidRequest('the body must be {"jobs": [...]}', "jobs")
    if len(raw) > 1:
        extra = sorted(k for k in raw if k != "jobs")[0]
        raise InvalidRequest(f"unknown field {extra!r}", extra)
    items: list[Any] = raw["jobs"]
    if len(items) > settings.limits.max_bulk_items:
        raise PayloadTooLarge(
            f"{len(items)} jobs, over the limit of {settings.limits.max_bulk_items} per request", "jobs"
        )
    gate, now = AdmissionGate(settings, request.app.state.redis), now_ms()
    context = span.headers() if span is not None else None
    entries: list[dict[str, Any]] = [{} for _ in items]
    valid: list[tuple[int, NewJob]] = []
    memo: dict[Any, Any] = {}
    with phase("job.validate", **{"batchshift.items": len(items)}):
        for index, item in enumerate(items):
            try:
                job = validate(item, tenant=tenant_name, now_ms=now, settings=settings, memo=memo)
            except BatchshiftError as exc:
                entries[index] = {"status": exc.status_code, "error": exc.to_dict()}
            else:
                if context is not None:
                    _traced(job, context)
                valid.append((index, job))
    accepted: list[tuple[int, NewJob]] = []
    priors: dict[int, str] = {}  # retries of stored jobs that admission would refuse as new
    with phase("job.admit", **{"batchshift.items": len(valid)}):
        for index, job in valid:  # in request order, as each item's admission counts the ones before
            try:
                prior = await _admitted(job, gate, ledger)
            except BatchshiftError as exc:
                entries[index] = {"status": exc.status_code, "error": exc.to_dict()}
            else:
                if prior is None:
                    accepted.append((index, job))
                else:
                    priors[index] = prior
    with phase("job.store", **{"batchshift.items": len(accepted)}):
        outcomes = await ledger.enqueue_each([job for _, job in accepted])
    _fail_whole_unless_stored(outcomes)
    existing = [o.job_id for o in outcomes if isinstance(o, EnqueueOutcome) and o.status == "existing"]
    existing += priors.values()
    found = {r.id: r for r in await ledger.get_views(existing) if r is not None} if existing else {}
    for (index, job), outcome in zip(accepted, outcomes, strict=True):
        if isinstance(outcome, ResponseError):
            entries[index] = _store_failed(job, outcome)
        elif outcome.status == "created":
            entries[index] = {"status": 202, "job": created_view(job, outcome.attached_to)}
        elif outcome.status == "existing" and outcome.job_id in found:
            entries[index] = {"status": 202, "job": found[outcome.job_id].view()}
        else:
            error = refusal(job, outcome, settings) or _conflict(job, outcome)
            entries[index] = {"status": error.status_code, "error": error.to_dict()}
    for index, prior in priors.items():
        record = found.get(prior)
        entries[index] = (
            {"status": 202, "job": record.view()}
            if record is not None and record.tenant == tenant_name
            else {"status": 404, "error": NotFound(f"no job {prior}", "id").to_dict()}
        )
    created = sum(isinstance(o, EnqueueOutcome) and o.status == "created" for o in outcomes)
    log.debug(
        "jobs.enqueued",
        tenant=tenant_name,
        items=len(items),
        created=created,
        refused=len(items) - len(accepted),
    )
    return JsonResponse({"results": entries})


def _fail_whole_unless_stored(outcomes: list[EnqueueOutcome | ResponseError]) -> None:
    """Raise the first job's error when jobs failed and none was created: nothing of the request was
    stored, so it fails as a whole (503 and retry-after when Redis is out of memory), as it always
    has. When some were created, each item answers for itself: a retry of the whole request would
    store the created ones twice."""
    failed = next((o for o in outcomes if isinstance(o, ResponseError)), None)
    if failed is not None and not any(
        isinstance(o, EnqueueOutcome) and o.status == "created" for o in outcomes
    ):
        raise failed


def _store_failed(job: NewJob, exc: ResponseError) -> dict[str, Any]:
    """The entry of a bulk item whose job Redis refused (it stored nothing of it): 503 when a retry
    can succeed (Redis out of memory, busy, read-only), 500 otherwise, as a request alone would get."""
    if store_unavailable(exc):
        log.warning("job.store_unavailable", job_id=job.id, error=str(exc))
        return {"status": 503, **error_body("unavailable", "the job store is unavailable; retry the job")}
    log.error("job.store_failed", job_id=job.id, error=str(exc))
    return {"status": 500, **error_body("internal_error", "internal error")}


@router.get("/{job_id}", summary="Read a job", responses={200: {"model": JobView}, **_ERRORS})
async def get_job(
    request: Request,
    job_id: str,
    tenant_name: Tenant,
    wait: Annotated[
        float | None, Query(description="Seconds to wait for the job to end (0 < wait <= limits.max_wait_s).")
    ] = None,
) -> JsonResponse:
    """The job; with ``wait`` the answer comes as soon as the job is terminal, or after ``wait`` seconds."""
    ledger = _ledger(request)
    if wait is not None:
        max_wait = _settings(request).limits.max_wait_s
        if not 0 < wait <= max_wait:
            raise InvalidRequest(f"wait must be more than 0 and at most {max_wait:g} seconds", "wait")
    record = await _owned(ledger, tenant_name, job_id)
    if wait is not None and not record.terminal:
        record = await _wait_for_end(request.app.state.watcher, ledger, record, wait)
    result = await ledger.result(record.id) if record.terminal else None
    return JsonResponse(record.view(result))


async def _wait_for_end(watcher: JobWatcher, ledger: Ledger, record: JobRecord, wait: float) -> JobRecord:
    """Subscribe, then re-read, then wait for the end or the timeout: no end is missed in between."""
    try:
        async with asyncio.timeout(wait), watcher.watch(record.id) as ended:
            while True:
                current = await ledger.get_view(record.id)
                if current is None or current.terminal:
                    return current or record
                record = current
                await ended.wait()
                ended.clear()
    except TimeoutError:
        return await ledger.get_view(record.id) or record


@router.get("", summary="List jobs", responses={200: {"model": JobList}, **_ERRORS})
async def list_jobs(
    request: Request,
    tenant_name: Tenant,
    status: Annotated[
        Literal["queued", "batched", "sync", "succeeded", "failed", "cancelled"] | None, Query()
    ] = None,
    feature: Annotated[str | None, Query(max_length=256)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = None,
) -> JsonResponse:
    """The tenant's jobs, newest first; ``result`` is null here (read a job for its result)."""
    records, next_cursor = await _ledger(request).list_jobs(
        tenant_name, status=status, feature=feature, limit=limit, cursor=cursor
    )
    return JsonResponse({"data": [r.view() for r in records], "next_cursor": next_cursor})


@router.post("/{job_id}/cancel", summary="Cancel a job", responses={200: {"model": JobView}, **_ERRORS})
async def cancel_job(request: Request, job_id: str, tenant_name: Tenant) -> JsonResponse:
    """Cancel a queued, batched or sync job; 409 when it already ended."""
    ledger = _ledger(request)
    await _owned(ledger, tenant_name, job_id)
    await ledger.cancel(job_id, now_ms())
    log.info("job.cancelled", job_id=job_id, tenant=tenant_name)
    record = await _owned(ledger, tenant_name, job_id)
    return JsonResponse(record.view())
