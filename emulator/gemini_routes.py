"""The emulated Gemini Developer API: batch mode, the Files API (resumable upload, download) and
``generateContent``.

Paths are the ones the ``google-genai`` SDK calls below its base URL: ``/v1beta/models/…``,
``/v1beta/batches/…``, ``/v1beta/files/…``, ``/upload/v1beta/files`` and
``/download/v1beta/files/…``. A resource name and its method share a path segment
(``gemini-2.5-flash:batchGenerateContent``, ``abc:cancel``), so each route splits on the colon.
"""

from __future__ import annotations

import asyncio
import secrets

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from emulator import faults, gemini_batch
from emulator.responses import emulator_state, error, found, json_body, json_response
from emulator.state import GeminiBatch, GeminiFile, GeminiUpload

MAX_FILE_BYTES = 2 * 1024**3  # the Files API's largest file
MAX_INLINE_BYTES = 20 * 1024**2  # inline batch requests, in total
MAX_PAGE = 1000
INVALID_JSON = "Invalid JSON payload received."

router = APIRouter()


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _split(target: str) -> tuple[str, str]:
    """``name:method`` → (name, method); a bare name has method ""."""
    name, _, method = target.partition(":")
    return name, method


@router.post("/v1beta/models/{target}")
async def model_method(request: Request, target: str) -> Response:
    model, method = _split(target)
    state, path = emulator_state(request), request.url.path
    if method == "generateContent":
        body = await json_body(request, INVALID_JSON)
        problem = gemini_batch.validate(body)
        if problem is not None:
            raise error(path, 400, problem)
        request.state.log.update(model=model)
        latency = faults.per_model(state.config["sync_latency_s"], model)
        if latency > 0:
            await asyncio.sleep(latency)
        return json_response(gemini_batch.answer(model, body))
    if method == "batchGenerateContent":
        raw = await request.body()
        if len(raw) > MAX_INLINE_BYTES:
            raise error(path, 400, "Request payload size exceeds the limit: 20971520 bytes.")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise error(path, 400, INVALID_JSON) from exc
        request.state.log.update(model=model)
        try:
            batch = gemini_batch.create(state, model, body, state.now())
        except gemini_batch.CreateRefused as exc:
            raise error(path, 400, str(exc)) from exc
        return json_response(gemini_batch.view(state, batch, state.now()))
    raise error(path, 404, f"Method {method!r} is not found for models.")


def _batch(request: Request, batch_id: str) -> GeminiBatch:
    return found(
        request,
        emulator_state(request).gemini_batches.get(batch_id),
        f"Batch batches/{batch_id} not found.",
    )


@router.get("/v1beta/batches/{batch_id}")
async def get_batch(request: Request, batch_id: str) -> Response:
    state = emulator_state(request)
    return json_response(gemini_batch.view(state, _batch(request, batch_id), state.now()))


@router.get("/v1beta/batches")
async def list_batches(request: Request) -> Response:
    """Newest first; ``pageToken`` is the offset into that order."""
    state, path = emulator_state(request), request.url.path
    now = state.now()
    try:
        size = int(request.query_params.get("pageSize") or 50)
        start = int(request.query_params.get("pageToken") or 0)
    except ValueError as exc:
        raise error(path, 400, "pageSize and pageToken must be integers.") from exc
    size = max(1, min(size, MAX_PAGE))
    newest = sorted(state.gemini_batches.values(), key=lambda b: b.created_at, reverse=True)
    page = newest[start : start + size]
    out: dict[str, object] = {"operations": [gemini_batch.view(state, b, now) for b in page]}
    if start + size < len(newest):
        out["nextPageToken"] = str(start + size)
    return json_response(out)


@router.post("/v1beta/batches/{target}")
async def batch_method(request: Request, target: str) -> Response:
    batch_id, method = _split(target)
    state, path = emulator_state(request), request.url.path
    now = state.now()
    batch = _batch(request, batch_id)
    if method == "cancel":
        current, _, _ = gemini_batch.status(batch, now)
        if current in gemini_batch.ENDED:
            raise error(path, 400, f"Batch batches/{batch_id} has already ended ({current}).")
        if batch.run.cancel_at is None:
            batch.run.cancel(now)
        return json_response({})
    if method == "delete":
        del state.gemini_batches[batch_id]
        return json_response({})
    raise error(path, 404, f"Method {method!r} is not found for batches.")


@router.delete("/v1beta/batches/{batch_id}")
async def delete_batch(request: Request, batch_id: str) -> Response:
    """Deleting forgets the batch (a running one stops); its responses file stays until deleted."""
    _batch(request, batch_id)
    del emulator_state(request).gemini_batches[batch_id]
    return json_response({})


@router.post("/upload/v1beta/files")
async def upload(request: Request) -> Response:
    """The resumable upload protocol: a ``start`` call announces the file and answers the upload
    URL; calls to that URL send the bytes, the last one with ``upload, finalize``."""
    state, path = emulator_state(request), request.url.path
    upload_id = request.query_params.get("upload_id")
    command = request.headers.get("x-goog-upload-command", "").replace(" ", "").split(",")
    if upload_id is None:
        if request.headers.get("x-goog-upload-protocol") != "resumable" or command != ["start"]:
            raise error(path, 400, "Only the resumable upload protocol's start command is served here.")
        try:
            size = int(request.headers.get("x-goog-upload-header-content-length", ""))
        except ValueError as exc:
            raise error(path, 400, "X-Goog-Upload-Header-Content-Length is required.") from exc
        if size > MAX_FILE_BYTES:
            raise error(path, 400, "Files may be at most 2 GB.")
        body = await json_body(request, INVALID_JSON)
        meta = body.get("file") if isinstance(body, dict) else None
        meta = meta if isinstance(meta, dict) else {}
        name = str(meta.get("name") or f"files/{secrets.token_hex(6)}")
        name = name if name.startswith("files/") else f"files/{name}"
        if name in state.gemini_files:
            raise error(path, 409, f"File {name} already exists.")
        mime = str(
            meta.get("mimeType") or request.headers.get("x-goog-upload-header-content-type") or "text/plain"
        )
        display = str(meta.get("displayName") or request.headers.get("x-goog-upload-file-name") or "")
        new = GeminiFile(name, display, mime, b"", state.now(), "UPLOADED")
        session = secrets.token_urlsafe(16)
        state.gemini_uploads[session] = GeminiUpload(new, size)
        url = f"{_base_url(request)}/upload/v1beta/files?upload_id={session}&upload_protocol=resumable"
        return Response(
            b"{}",
            media_type="application/json",
            headers={"x-goog-upload-url": url, "x-goog-upload-status": "active"},
        )
    session_state = state.gemini_uploads.get(upload_id)
    if session_state is None:
        raise error(path, 404, "No upload session with this id.")
    if "upload" not in command:
        raise error(path, 400, "X-Goog-Upload-Command must be upload or upload, finalize.")
    offset = int(request.headers.get("x-goog-upload-offset") or 0)
    if offset != len(session_state.received):
        raise error(
            path, 400, f"Offset {offset} does not match the {len(session_state.received)} bytes held."
        )
    async for chunk in request.stream():
        session_state.received += chunk
        if len(session_state.received) > session_state.size:
            del state.gemini_uploads[upload_id]
            raise error(path, 400, "More bytes than X-Goog-Upload-Header-Content-Length announced.")
    if "finalize" not in command:
        return Response(b"", headers={"x-goog-upload-status": "active"})
    del state.gemini_uploads[upload_id]
    done = session_state.file
    done.content = bytes(session_state.received)
    state.gemini_files[done.name] = done
    return Response(
        orjson.dumps({"file": gemini_batch.file_view(done, _base_url(request))}),
        media_type="application/json",
        headers={"x-goog-upload-status": "final"},
    )


def _file(request: Request, file_id: str) -> GeminiFile:
    return found(
        request,
        emulator_state(request).gemini_files.get(f"files/{file_id}"),
        f"File files/{file_id} does not exist.",
    )


async def _download(request: Request, target: str) -> Response:
    file_id, method = _split(target)
    if method != "download":
        raise error(request.url.path, 404, f"Method {method!r} is not found for files.")
    return Response(_file(request, file_id).content, media_type="application/octet-stream")


@router.get("/v1beta/files/{target}")
async def get_file(request: Request, target: str) -> Response:
    if ":" in target:
        return await _download(request, target)
    return json_response(gemini_batch.file_view(_file(request, target), _base_url(request)))


@router.get("/download/v1beta/files/{target}")
async def download_file(request: Request, target: str) -> Response:
    return await _download(request, target)


@router.get("/v1beta/files")
async def list_files(request: Request) -> Response:
    state = emulator_state(request)
    base = _base_url(request)
    return json_response({"files": [gemini_batch.file_view(f, base) for f in state.gemini_files.values()]})


@router.delete("/v1beta/files/{file_id}")
async def delete_file(request: Request, file_id: str) -> Response:
    _file(request, file_id)
    del emulator_state(request).gemini_files[f"files/{file_id}"]
    return json_response({})
