"""The emulated Anthropic API: the Messages endpoint and Message Batches."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from starlette.responses import Response

from emulator import anthropic_batch, faults, outputs
from emulator.responses import emulator_state, error, found, json_body, json_response
from emulator.state import AnthropicBatch

MAX_LIST_LIMIT = 1000

router = APIRouter()
# What the provider says of a body that is not JSON.
INVALID_JSON = "Request body is not valid JSON."


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


@router.post("/v1/messages")
async def create_message(request: Request) -> Response:
    state = emulator_state(request)
    params = await json_body(request, INVALID_JSON)
    problem = outputs.validate_anthropic(params)
    if problem is not None:
        raise error(request.url.path, 400, problem)
    request.state.log.update(model=params["model"])
    latency = faults.per_model(state.config["sync_latency_s"], params["model"])
    if latency > 0:
        await asyncio.sleep(latency)
    await faults.held(lambda: state.config["hold_sync"], params["model"])
    return json_response(
        outputs.anthropic_answer(params, state.cache.at(state.now(), _account(request)), "standard")
    )


@router.post("/v1/messages/batches")
async def create_batch(request: Request) -> Response:
    state = emulator_state(request)
    now = state.now()
    body = await json_body(request, INVALID_JSON)
    try:
        batch = anthropic_batch.create(state, body, now, _account(request))
    except anthropic_batch.CreateRefused as exc:
        raise error(request.url.path, 400, str(exc)) from exc
    return json_response(anthropic_batch.view(state, batch, now, _base_url(request)))


def _account(request: Request) -> str:
    """Whose prompt cache a call uses: its API key's (``x-api-key``, or a bearer token as the gate takes)."""
    return request.headers.get("x-api-key") or request.headers.get("authorization", "")


def _batch(request: Request, batch_id: str) -> AnthropicBatch:
    return found(
        request,
        emulator_state(request).anthropic_batches.get(batch_id),
        f"No message batch found with id '{batch_id}'.",
    )


@router.get("/v1/messages/batches/{batch_id}")
async def get_batch(request: Request, batch_id: str) -> Response:
    state, batch = emulator_state(request), _batch(request, batch_id)
    return json_response(anthropic_batch.view(state, batch, state.now(), _base_url(request)))


@router.get("/v1/messages/batches")
async def list_batches(request: Request) -> Response:
    state, path = emulator_state(request), request.url.path
    now = state.now()
    raw = request.query_params.get("limit")
    try:
        limit = 20 if raw is None else int(raw)
    except ValueError as exc:
        raise error(path, 400, f"limit: Input should be a valid integer, got {raw!r}") from exc
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise error(path, 400, f"limit: must be between 1 and {MAX_LIST_LIMIT}")
    newest_first = sorted(state.anthropic_batches.values(), key=lambda b: b.created_at, reverse=True)
    ids = [b.id for b in newest_first]
    after, before = request.query_params.get("after_id"), request.query_params.get("before_id")
    if after:
        rest = newest_first[ids.index(after) + 1 :] if after in ids else []
        page, has_more = rest[:limit], len(rest) > limit
    elif before:
        newer = newest_first[: ids.index(before)] if before in ids else []
        page, has_more = newer[-limit:], len(newer) > limit
    else:
        page, has_more = newest_first[:limit], len(newest_first) > limit
    return json_response(
        {
            "data": [anthropic_batch.view(state, b, now, _base_url(request)) for b in page],
            "has_more": has_more,
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
        }
    )


@router.post("/v1/messages/batches/{batch_id}/cancel")
async def cancel_batch(request: Request, batch_id: str) -> Response:
    state = emulator_state(request)
    now = state.now()
    batch = _batch(request, batch_id)
    current, _ = anthropic_batch.status(batch, now)
    if current == "ended":
        raise error(
            request.url.path, 400, f"Message batch {batch_id} has already ended and cannot be canceled."
        )
    if batch.run.cancel_at is None:
        batch.run.cancel(now)
    return json_response(anthropic_batch.view(state, batch, now, _base_url(request)))


@router.get("/v1/messages/batches/{batch_id}/results")
async def batch_results(request: Request, batch_id: str) -> Response:
    state = emulator_state(request)
    now = state.now()
    batch = _batch(request, batch_id)
    anthropic_batch.view(state, batch, now, _base_url(request))  # builds the results once ended
    if batch.results is None:
        raise error(
            request.url.path, 400, f"Message batch {batch_id} is still processing; results are not ready."
        )
    return Response(batch.results, media_type="application/binary")


@router.delete("/v1/messages/batches/{batch_id}")
async def delete_batch(request: Request, batch_id: str) -> Response:
    state = emulator_state(request)
    now = state.now()
    batch = _batch(request, batch_id)
    current, _ = anthropic_batch.status(batch, now)
    if current != "ended":
        raise error(request.url.path, 400, f"Message batch {batch_id} is still processing; cancel it first.")
    del state.anthropic_batches[batch_id]
    return json_response({"id": batch_id, "type": "message_batch_deleted"})
