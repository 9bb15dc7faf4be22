"""Anthropic's Message Batches API on batchshift: ``base_url`` = batchshift and the ``anthropic``
SDK's ``messages.batches`` calls run unchanged, the tenant's key in ``x-api-key``.

A create's inline ``requests`` become jobs of the tenant like the lines of an OpenAI batch
(scheduler/compat); ``results`` streams the JSONL from the ledger. Errors use Anthropic's shape.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import StreamingResponse

from api.auth import anthropic_tenant
from api.body import read_json
from api.jobs import BULK_BODY_FACTOR
from api.responses import JsonResponse
from config.settings import Settings
from scheduler.compat import outputs
from scheduler.compat.batches import ClientBatch
from scheduler.compat.intake import BatchIntake
from scheduler.errors import InvalidRequest, NotFound
from scheduler.ledger.clock import Clock

router = APIRouter(prefix="/v1/messages/batches", tags=["anthropic-compatible"])

Tenant = Annotated[str, Depends(anthropic_tenant)]


async def _now(request: Request) -> int:
    """Epoch ms: the app's injected clock (``app.state.clock``, a test's virtual one) or the wall."""
    clock: Clock | None = getattr(request.app.state, "clock", None)
    return await clock.now_ms() if clock is not None else time.time_ns() // 1_000_000


def _intake(request: Request) -> BatchIntake:
    intake: BatchIntake = request.app.state.batch_intake
    return intake


async def _view(request: Request, batch: ClientBatch) -> dict[str, Any]:
    results_url = str(request.url_for("batch_results", batch_id=batch.id))
    return batch.anthropic_view(await _now(request), results_url)


async def _batch(request: Request, tenant_name: str, batch_id: str) -> ClientBatch:
    batch = await _intake(request).batches.get(tenant_name, batch_id)
    if batch is None or batch.api != "anthropic":
        raise NotFound(f"No message batch found with id '{batch_id}'.", "message_batch_id")
    return batch


@router.post("", summary="Create a Message Batch (Anthropic's API)")
async def create_batch(request: Request, tenant_name: Tenant) -> JsonResponse:
    """Every request becomes a job of the tenant; an invalid one refuses the create (400)."""
    settings: Settings = request.app.state.settings
    body = await read_json(request, settings.limits.max_body_bytes * BULK_BODY_FACTOR)
    if not isinstance(body, dict) or set(body) - {"requests", "callback_url"}:
        raise InvalidRequest(
            "The body must be an object with 'requests' (and batchshift's 'callback_url').", "requests"
        )
    batch = await _intake(request).anthropic(
        tenant_name, body.get("requests"), now_ms=await _now(request), callback_url=body.get("callback_url")
    )
    return JsonResponse(await _view(request, batch))


@router.get("", summary="The tenant's Message Batches, newest first")
async def list_batches(
    request: Request,
    tenant_name: Tenant,
    after_id: Annotated[str | None, Query(max_length=64)] = None,
    before_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> JsonResponse:
    """``after_id`` pages toward older batches, ``before_id`` toward newer ones (the SDK's
    auto-paging follows whichever it was given); ``has_more`` tells of more that way."""
    if after_id is not None and before_id is not None:
        raise InvalidRequest("Only one of after_id and before_id may be given.", "before_id")
    page, has_more = await _intake(request).batches.page(
        tenant_name, "anthropic", after=after_id, before=before_id, limit=limit
    )
    return JsonResponse(
        {
            "data": [await _view(request, b) for b in page],
            "has_more": has_more,
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
        }
    )


@router.get("/{batch_id}", summary="A Message Batch, derived from its jobs")
async def get_batch(request: Request, batch_id: str, tenant_name: Tenant) -> JsonResponse:
    return JsonResponse(await _view(request, await _batch(request, tenant_name, batch_id)))


@router.post("/{batch_id}/cancel", summary="Cancel a Message Batch")
async def cancel_batch(request: Request, batch_id: str, tenant_name: Tenant) -> JsonResponse:
    batch = await _batch(request, tenant_name, batch_id)
    return JsonResponse(await _view(request, await _intake(request).cancel(batch, await _now(request))))


@router.delete("/{batch_id}", summary="Delete an ended Message Batch")
async def delete_batch(request: Request, batch_id: str, tenant_name: Tenant) -> JsonResponse:
    """Anthropic's rule: only a batch that ended; one still processing is cancelled first."""
    batch = await _batch(request, tenant_name, batch_id)
    await _intake(request).batches.delete(batch.id, await _now(request))
    return JsonResponse({"id": batch.id, "type": "message_batch_deleted"})


@router.get("/{batch_id}/results", name="batch_results", summary="An ended batch's results, as JSONL")
async def batch_results(request: Request, batch_id: str, tenant_name: Tenant) -> StreamingResponse:
    batch = await _batch(request, tenant_name, batch_id)
    if (await _view(request, batch))["processing_status"] != "ended":
        raise InvalidRequest(
            f"Message batch '{batch_id}' has not ended; its results are not ready.", "message_batch_id"
        )
    intake = _intake(request)
    stream = outputs.anthropic_results(intake.redis, intake.batches, batch, await _now(request))
    return StreamingResponse(stream, media_type="application/x-jsonl")
