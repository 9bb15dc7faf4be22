"""OpenAI's Files and Batches API on batchshift: ``base_url`` = batchshift and the ``openai`` SDK's
batch code runs unchanged, with the tenant's key as its API key.

``POST /v1/files`` takes a multipart upload (``purpose=batch``) and streams it into Redis;
``POST /v1/batches`` turns every line of the file into a job of the tenant (scheduler/compat);
``GET /v1/batches/{id}`` derives the Batch object from its jobs' counters; output and error files
are streamed from the ledger. Errors use OpenAI's shape (api/compat_errors.py).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, Query, Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.responses import StreamingResponse

from api.auth import tenant
from api.body import read_json
from api.responses import JsonResponse
from config.settings import Settings
from scheduler.compat import outputs
from scheduler.compat.batches import ClientBatch
from scheduler.compat.files import derived
from scheduler.compat.intake import OPENAI_ENDPOINTS, BatchIntake, check_metadata
from scheduler.errors import InvalidRequest, NotFound
from scheduler.ledger.clock import Clock

router = APIRouter(tags=["openai-compatible"])

Tenant = Annotated[str, Depends(tenant)]

# Form overhead around the file: boundaries, part headers, the purpose field.
MAX_FORM_OVERHEAD: Final = 64 * 1024
UPLOAD_SLICE: Final = 1024 * 1024
# ``output_expires_after`` is taken and ignored (outputs follow retention); ``callback_url`` is a
# batchshift extension (the SDK's ``extra_body``): a ``batch.completed`` webhook when the batch ends.
BATCH_FIELDS: Final = frozenset(
    {"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after", "callback_url"}
)


async def _now(request: Request) -> int:
    """Epoch ms: the app's injected clock (``app.state.clock``, a test's virtual one) or the wall."""
    clock: Clock | None = getattr(request.app.state, "clock", None)
    return await clock.now_ms() if clock is not None else time.time_ns() // 1_000_000


def _intake(request: Request) -> BatchIntake:
    intake: BatchIntake = request.app.state.batch_intake
    return intake


def too_large(limit: int) -> str:
    """OpenAI's words for a batch file over its size limit (a 400, not a 413)."""
    return f"Batch input files may be at most {limit} bytes."


async def _upload_chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(UPLOAD_SLICE):
        yield chunk


@router.post("/v1/files", summary="Upload a batch input file (OpenAI's Files API)")
async def create_file(request: Request, tenant_name: Tenant) -> JsonResponse:
    """A JSONL file for ``POST /v1/batches``; only ``purpose=batch`` is taken."""
    settings: Settings = request.app.state.settings
    limit = settings.compat.max_file_bytes
    # The form is spooled to disk as it is parsed, before any part's size is known: a declared
    # length bounds it up front (the SDKs always send one), so no upload fills the disk.
    declared = request.headers.get("content-length")
    if declared is None or not declared.isdigit():
        raise InvalidRequest("Content-Length is required for a file upload.", "content-length")
    if int(declared) > limit + MAX_FORM_OVERHEAD:
        raise InvalidRequest(too_large(limit), "file")
    try:
        form = await request.form(max_files=1, max_fields=4)
    except (MultiPartException, HTTPException) as exc:  # starlette's answers to a malformed form
        detail = exc.message if isinstance(exc, MultiPartException) else exc.detail
        raise InvalidRequest(f"Could not parse the multipart form: {detail}.", "file") from None
    try:
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("Missing required parameter: 'file'.", "file")
        if purpose != "batch":
            raise InvalidRequest(
                f"Invalid value for 'purpose': {purpose!r}. batchshift takes files for batches only ('batch').",
                "purpose",
            )
        record = await _intake(request).files.create(  # over the limit: OpenAI's 400, nothing kept
            tenant_name,
            "batch",
            upload.filename or "upload.jsonl",
            _upload_chunks(upload),
            max_bytes=limit,
            now_ms=await _now(request),
        )
    finally:
        await form.close()
    return JsonResponse(record.view())


@router.get("/v1/files", summary="The tenant's uploaded files")
async def list_files(
    request: Request,
    tenant_name: Tenant,
    purpose: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Annotated[Literal["asc", "desc"], Query()] = "desc",
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> JsonResponse:
    """OpenAI's file list (uploads; output and error files are reached from their batch)."""
    page, has_more = await _intake(request).files.page(
        tenant_name, purpose=purpose, after=after, limit=limit, newest_first=order == "desc"
    )
    return JsonResponse(
        {
            "object": "list",
            "data": [f.view() for f in page],
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
            "has_more": has_more,
        }
    )


async def _derived_batch(request: Request, tenant_name: str, file_id: str) -> tuple[ClientBatch, str] | None:
    """The ended batch an output or error file id names (with its kind), or None."""
    named = derived(file_id)
    if named is None:
        return None
    batch = await _intake(request).batches.get(tenant_name, named[0])
    if batch is None or batch.api != "openai":
        raise NotFound(f"No such File object: {file_id}", "file_id")
    view = batch.openai_view(await _now(request))
    if view["output_file_id" if named[1] == "output" else "error_file_id"] != file_id:
        raise NotFound(f"No such File object: {file_id}", "file_id")
    if named[1] in batch.deleted_files:
        raise NotFound(f"No such File object: {file_id}", "file_id")
    return batch, named[1]


def _derived_stream(request: Request, batch: ClientBatch, kind: str, now: int) -> AsyncIterator[bytes]:
    intake = _intake(request)
    return outputs.openai_file(
        intake.redis, intake.batches, batch, "output" if kind == "output" else "errors", now
    )


@router.get("/v1/files/{file_id}", summary="A file's metadata")
async def get_file(request: Request, file_id: str, tenant_name: Tenant) -> JsonResponse:
    found = await _derived_batch(request, tenant_name, file_id)
    if found is not None:
        batch, kind = found
        size = await outputs.file_size(_derived_stream(request, batch, kind, await _now(request)))
        ended_ms = batch.ended_ms or batch.expires_ms
        return JsonResponse(
            {
                "id": file_id,
                "object": "file",
                "bytes": size,
                "created_at": ended_ms // 1000,
                "filename": f"{batch.id}_{'output' if kind == 'output' else 'error'}.jsonl",
                "purpose": "batch_output",
                "status": "processed",
                "status_details": None,
            }
        )
    record = await _intake(request).files.get(tenant_name, file_id)
    if record is None:
        raise NotFound(f"No such File object: {file_id}", "file_id")
    return JsonResponse(record.view())


@router.get("/v1/files/{file_id}/content", summary="A file's content, streamed")
async def get_file_content(request: Request, file_id: str, tenant_name: Tenant) -> StreamingResponse:
    found = await _derived_batch(request, tenant_name, file_id)
    if found is not None:
        return StreamingResponse(
            _derived_stream(request, *found, await _now(request)), media_type="application/octet-stream"
        )
    files = _intake(request).files
    if await files.get(tenant_name, file_id) is None:
        raise NotFound(f"No such File object: {file_id}", "file_id")
    return StreamingResponse(files.content(file_id), media_type="application/octet-stream")


@router.delete("/v1/files/{file_id}", summary="Delete an uploaded file")
async def delete_file(request: Request, file_id: str, tenant_name: Tenant) -> JsonResponse:
    """A batch made from the file runs on (its lines are jobs already), as OpenAI's do. A deleted
    output or error file reads as missing; its batch still names it, as OpenAI's does."""
    found = await _derived_batch(request, tenant_name, file_id)
    if found is not None:
        if not await _intake(request).batches.delete_file(found[0].id, found[1], await _now(request)):
            raise NotFound(f"No such File object: {file_id}", "file_id")
        return JsonResponse({"id": file_id, "object": "file", "deleted": True})
    if not await _intake(request).files.delete(tenant_name, file_id):
        raise NotFound(f"No such File object: {file_id}", "file_id")
    return JsonResponse({"id": file_id, "object": "file", "deleted": True})


@router.post("/v1/batches", summary="Create a batch from an uploaded file (OpenAI's Batch API)")
async def create_batch(request: Request, tenant_name: Tenant) -> JsonResponse:
    """Every line becomes a job of the tenant, due at the end of ``completion_window``."""
    settings: Settings = request.app.state.settings
    body = await read_json(request, settings.limits.max_body_bytes)
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object.")
    unknown = sorted(set(body) - BATCH_FIELDS)
    if unknown:
        raise InvalidRequest(f"Unrecognized request argument supplied: {unknown[0]}", unknown[0])
    endpoint = body.get("endpoint")
    if endpoint not in OPENAI_ENDPOINTS:
        raise InvalidRequest(
            f"Invalid value for 'endpoint': {endpoint!r}. Supported: {', '.join(OPENAI_ENDPOINTS)}.",
            "endpoint",
        )
    metadata = check_metadata(body.get("metadata"))
    file_id = body.get("input_file_id")
    intake = _intake(request)
    input_file = await intake.files.get(tenant_name, file_id) if isinstance(file_id, str) else None
    if input_file is None:
        raise InvalidRequest(f"Invalid 'input_file_id': no such file {file_id!r}.", "input_file_id")
    batch = await intake.openai(
        tenant_name,
        input_file_id=input_file.id,
        endpoint=str(endpoint),
        window=body.get("completion_window"),
        metadata=metadata,
        now_ms=await _now(request),
        callback_url=body.get("callback_url"),
    )
    return JsonResponse(batch.openai_view(await _now(request)))


async def _batch(request: Request, tenant_name: str, batch_id: str) -> ClientBatch:
    batch = await _intake(request).batches.get(tenant_name, batch_id)
    if batch is None or batch.api != "openai":
        raise NotFound(f"No batch found with id '{batch_id}'.", "batch_id")
    return batch


@router.get("/v1/batches/{batch_id}", summary="A batch, derived from its jobs")
async def get_batch(request: Request, batch_id: str, tenant_name: Tenant) -> JsonResponse:
    return JsonResponse((await _batch(request, tenant_name, batch_id)).openai_view(await _now(request)))


@router.get("/v1/batches", summary="The tenant's batches, newest first")
async def list_batches(
    request: Request,
    tenant_name: Tenant,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> JsonResponse:
    page, has_more = await _intake(request).batches.page(tenant_name, "openai", after=after, limit=limit)
    now = await _now(request)
    data: list[dict[str, Any]] = [b.openai_view(now) for b in page]
    return JsonResponse(
        {
            "object": "list",
            "data": data,
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
            "has_more": has_more,
        }
    )


@router.post("/v1/batches/{batch_id}/cancel", summary="Cancel a batch")
async def cancel_batch(request: Request, batch_id: str, tenant_name: Tenant) -> JsonResponse:
    """Its unfinished lines are cancelled; the lines already answered stay in its output file."""
    batch = await _batch(request, tenant_name, batch_id)
    cancelled = await _intake(request).cancel(batch, await _now(request))
    return JsonResponse(cancelled.openai_view(await _now(request)))
