"""The emulated OpenAI API: files, batches, and the chat, embeddings and responses endpoints."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from emulator import events, faults, multipart, openai_batch, outputs
from emulator.responses import emulator_state, error, found, json_body, json_response, retry_headers
from emulator.state import OpenAIBatch, first_line_model, new_id

BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings", "/v1/responses")
MAX_BATCH_FILE_BYTES = 200 * 1024 * 1024
MAX_FILE_BYTES = 512 * 1024 * 1024  # any file, as OpenAI's Files API documents
MAX_FORM_OVERHEAD = 64 * 1024  # boundaries, part headers and the purpose field around the file
FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
MAX_LIST_LIMIT = 100
MAX_FILES_LIMIT = 10_000  # OpenAI's default and largest page of GET /v1/files
MAX_METADATA_PAIRS = 16

router = APIRouter()
# What the provider says of a body that is not JSON.
INVALID_JSON = "We could not parse the JSON body of your request."


@router.post("/v1/files")
async def create_file(request: Request) -> Response:
    state = emulator_state(request)
    try:
        form = await multipart.read_form(
            request.headers.get("content-type", ""), request.stream(), MAX_FILE_BYTES + MAX_FORM_OVERHEAD
        )
    except multipart.BodyTooLarge as exc:
        raise error(request.url.path, 413, "Files may be at most 512 MB.") from exc
    except multipart.MultipartError as exc:
        raise error(request.url.path, 400, f"Could not parse the multipart form: {exc}.") from exc
    upload, purpose_part = form.get("file"), form.get("purpose")
    purpose = purpose_part.content.decode(errors="replace") if purpose_part else None
    if upload is None or upload.filename is None:
        raise error(request.url.path, 400, "Missing required parameter: 'file'.")
    if purpose not in FILE_PURPOSES:
        raise error(request.url.path, 400, f"Invalid value for 'purpose': {purpose!r}.")
    if purpose == "batch" and upload.size > MAX_BATCH_FILE_BYTES:
        raise error(request.url.path, 400, "Batch input files may be at most 200 MB.")
    obj = state.add_file(upload.filename or "upload.jsonl", str(purpose), upload.pieces)
    return json_response(obj.to_json())


def _file(request: Request, file_id: str) -> Any:
    return found(request, emulator_state(request).files.get(file_id), f"No such File object: {file_id}")


@router.get("/v1/files/{file_id}")
async def get_file(request: Request, file_id: str) -> Response:
    return json_response(_file(request, file_id).to_json())


@router.get("/v1/files/{file_id}/content")
async def get_file_content(request: Request, file_id: str) -> Response:
    return Response(_file(request, file_id).content, media_type="application/octet-stream")


@router.get("/v1/files")
async def list_files(request: Request) -> Response:
    """OpenAI's ListFilesResponse: newest first by default, ``purpose``, ``order``, ``after``, ``limit``."""
    files = list(emulator_state(request).files.values())  # insertion order: oldest first
    purpose = request.query_params.get("purpose")
    if purpose:
        files = [f for f in files if f.purpose == purpose]
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise error(request.url.path, 400, f"Invalid 'order': {order!r}.")
    if order == "desc":
        files.reverse()
    after = request.query_params.get("after")
    if after:
        ids = [f.id for f in files]
        files = files[ids.index(after) + 1 :] if after in ids else []
    limit = _limit(request, default=MAX_FILES_LIMIT, most=MAX_FILES_LIMIT)
    page = files[:limit]
    return json_response(
        {
            "object": "list",
            "data": [f.to_json() for f in page],
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
            "has_more": len(files) > limit,
        }
    )


@router.delete("/v1/files/{file_id}")
async def delete_file(request: Request, file_id: str) -> Response:
    """OpenAI's DeleteFileResponse; a batch whose input is deleted runs on, as OpenAI's do."""
    if not emulator_state(request).delete_file(file_id):
        raise error(request.url.path, 404, f"No such File object: {file_id}")
    return json_response({"id": file_id, "object": "file", "deleted": True})


@router.post("/v1/batches")
async def create_batch(request: Request) -> Response:
    return json_response(await new_batch(request, BATCH_ENDPOINTS))


async def new_batch(request: Request, endpoints: tuple[str, ...], *, azure: bool = False) -> dict[str, Any]:
    """Create a batch from the request's body; ``endpoints`` are the values ``endpoint`` may take.

    A model listed in the ``token_limit_exceeded`` fault gets a batch that has already failed with
    that code, as OpenAI and Azure answer a create once the enqueued-token quota is full.
    """
    state, path = emulator_state(request), request.url.path
    body = await json_body(request, INVALID_JSON)
    if not isinstance(body, dict):
        raise error(path, 400, "The body must be a JSON object.")
    endpoint, window = body.get("endpoint"), body.get("completion_window")
    if endpoint not in endpoints:
        raise error(path, 400, f"Invalid value for 'endpoint': {endpoint!r}.", code="invalid_value")
    if window != "24h":
        raise error(path, 400, "Invalid value for 'completion_window': only '24h' is supported.")
    metadata = body.get("metadata")
    if metadata is not None and not (
        isinstance(metadata, dict)
        and len(metadata) <= MAX_METADATA_PAIRS
        and all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512
            for k, v in metadata.items()
        )
    ):
        raise error(
            path, 400, "Invalid 'metadata': up to 16 string pairs, keys <= 64 and values <= 512 chars."
        )
    file_id = body.get("input_file_id")
    input_file = state.files.get(file_id) if isinstance(file_id, str) else None
    if input_file is None:
        raise error(path, 400, f"Invalid 'input_file_id': no such file {file_id!r}.")
    if input_file.purpose != "batch":
        raise error(path, 400, "The input file must be uploaded with purpose 'batch'.")
    now = state.now()
    model = first_line_model(input_file.first_line())
    over_quota = faults.model_listed(state.config["token_limit_exceeded"], model)
    batch = OpenAIBatch(
        id=new_id("batch_"),
        endpoint=endpoint,
        input_file_id=input_file.id,
        completion_window=window,
        metadata=metadata,
        model=model,
        run=state.new_run(model, now, validating=not over_quota),
        created_at=int(now),
        invalid_file=faults.model_listed(state.config["invalid_file"], model),
        line_error_rate=faults.per_model(state.config["line_error_rate"], model),
        line_error_status=int(state.config["line_error_status"]),
        azure=azure,
    )
    if over_quota:
        batch.errors = [openai_batch.token_limit_error(model)]
    state.openai_batches[batch.id] = batch
    events.watch(state, batch.id)
    return openai_batch.view(state, batch, now)


def _batch(request: Request, batch_id: str) -> OpenAIBatch:
    return found(
        request, emulator_state(request).openai_batches.get(batch_id), f"No batch found with id '{batch_id}'."
    )


@router.get("/v1/batches/{batch_id}")
async def get_batch(request: Request, batch_id: str) -> Response:
    state = emulator_state(request)
    return json_response(openai_batch.view(state, _batch(request, batch_id), state.now()))


@router.get("/v1/batches")
async def list_batches(request: Request) -> Response:
    state = emulator_state(request)
    now = state.now()
    limit = _limit(request, default=20, most=MAX_LIST_LIMIT)
    newest_first = sorted(state.openai_batches.values(), key=lambda b: b.run.created, reverse=True)
    after = request.query_params.get("after")
    if after:
        ids = [b.id for b in newest_first]
        newest_first = newest_first[ids.index(after) + 1 :] if after in ids else []
    page = newest_first[:limit]
    return json_response(
        {
            "object": "list",
            "data": [openai_batch.view(state, b, now) for b in page],
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
            "has_more": len(newest_first) > limit,
        }
    )


def _limit(request: Request, *, default: int, most: int) -> int:
    raw = request.query_params.get("limit")
    try:
        limit = default if raw is None else int(raw)
    except ValueError as exc:
        raise error(request.url.path, 400, f"Invalid 'limit': {raw!r}.") from exc
    if not 1 <= limit <= most:
        raise error(request.url.path, 400, f"Invalid 'limit': must be between 1 and {most}.")
    return limit


@router.post("/v1/batches/{batch_id}/cancel")
async def cancel_batch(request: Request, batch_id: str) -> Response:
    state = emulator_state(request)
    now = state.now()
    batch = _batch(request, batch_id)
    current, _ = openai_batch.status(state, batch, now)
    if current in openai_batch.ENDED:
        raise error(request.url.path, 400, f"Cannot cancel a batch with status '{current}'.")
    if batch.run.cancel_at is None:
        batch.run.cancel(now)
    return json_response(openai_batch.view(state, batch, now))


async def sync_answer(request: Request, endpoint: str, deployment: str | None = None) -> Response:
    """Answer a sync call; ``deployment`` (Azure's path names it) is the model the call runs on."""
    state, path = emulator_state(request), request.url.path
    body = await json_body(request, INVALID_JSON)
    if deployment is not None and isinstance(body, dict):
        body["model"] = deployment
    problem = outputs.validate_openai(endpoint, body)
    if problem is not None:
        raise error(path, 400, problem)
    tier = body.get("service_tier") or "auto"
    request.state.log.update(model=body["model"], service_tier=tier)
    if tier == "flex" and state.rng.random() < float(state.config["flex_unavailable"]):
        refusal = error(
            path, 429, "Resource unavailable, please try again later.", code="resource_unavailable"
        )
        refusal.headers.update(retry_headers(float(state.config["retry_after_s"])))
        raise refusal
    latency = faults.per_model(state.config["sync_latency_s"], body["model"])
    if tier == "flex":
        latency += faults.per_model(state.config["flex_latency_s"], body["model"])
    if latency > 0:
        await asyncio.sleep(latency)
    await faults.held(lambda: state.config["hold_sync"], body["model"])
    answered_tier = tier if tier in ("flex", "priority", "scale") else "default"
    # Whose prompt cache the call uses: its API key's (Azure's api-key header, else the bearer token).
    cache = state.cache.at(
        state.now(), request.headers.get("api-key") or request.headers.get("authorization", "")
    )
    return json_response(outputs.openai_answer(endpoint, body, cache, answered_tier))


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await sync_answer(request, "/v1/chat/completions")


@router.post("/v1/embeddings")
async def embeddings(request: Request) -> Response:
    return await sync_answer(request, "/v1/embeddings")


@router.post("/v1/responses")
async def responses(request: Request) -> Response:
    return await sync_answer(request, "/v1/responses")
