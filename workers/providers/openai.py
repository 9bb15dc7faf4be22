"""The adapter for OpenAI and OpenAI-compatible APIs (Azure OpenAI, Groq, Together, the emulator).

Batch: spool the JSONL input, upload it as a file with ``purpose=batch``, create the batch with
``completion_window: "24h"`` and our batch id in ``metadata``. Results: stream both the output
and the error file (a completed batch can have no output file when every line failed).
``base_url`` includes the API version, as in the official SDK (``https://api.openai.com/v1``);
endpoints are named as OpenAI's batch lines name them (``/v1/chat/completions``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, cast

import msgspec
import orjson

from config.tracing import phase
from workers import http
from workers.errors import (
    BatchCreateUnknown,
    MalformedResponse,
    ProviderError,
)
from workers.providers import batch_input, jsonl
from workers.providers.adapter import BatchAdapter, BeforeCreate
from workers.providers.base import (
    BatchInfo,
    Outcome,
    RequestId,
    ResultLine,
    Status,
    batch_metadata,
)
from workers.providers.batch_input import BatchInput

STATUSES: frozenset[str] = frozenset(
    {"validating", "in_progress", "finalizing", "cancelling", "completed", "failed", "expired", "cancelled"}
)
LIST_PAGE = 100  # OpenAI's largest page
# Line errors that are not about the request itself: the work was never done, so it may be redone.
RETRIABLE_LINE_CODES = frozenset({"batch_expired", "batch_cancelled", "request_timeout"})
API_VERSION_PREFIX = "/v1"
FILE_ROLES = ("input_file_id", "output_file_id", "error_file_id")


def batch_endpoint(endpoint: str) -> str:
    """The endpoint as batch lines and the create call name it: ``/v1/...``."""
    return endpoint if endpoint.startswith(API_VERSION_PREFIX + "/") else API_VERSION_PREFIX + endpoint


def sync_path(endpoint: str) -> str:
    """The endpoint's path below ``base_url`` (which already carries ``/v1``)."""
    return (
        endpoint.removeprefix(API_VERSION_PREFIX)
        if endpoint.startswith(API_VERSION_PREFIX + "/")
        else endpoint
    )


def batch_info(obj: dict[str, Any]) -> BatchInfo:
    """A Batch object, normalised."""
    try:
        raw = str(obj["status"])
        status = raw.lower()  # Azure's older API versions capitalise
        if status not in STATUSES:
            raise MalformedResponse(f"unknown OpenAI batch status {raw!r}")
        counts = obj.get("request_counts") or {}
        ended = next(
            (
                obj[k]
                for k in ("completed_at", "failed_at", "expired_at", "cancelled_at")
                if obj.get(k) is not None
            ),
            None,
        )
        return BatchInfo(
            provider_batch_id=str(obj["id"]),
            status=cast(Status, status),
            raw_status=raw,
            total=int(counts.get("total") or 0),
            completed=int(counts.get("completed") or 0),
            failed=int(counts.get("failed") or 0),
            created_at=float(obj["created_at"]) if obj.get("created_at") is not None else None,
            ended_at=float(ended) if ended is not None else None,
            metadata={str(k): str(v) for k, v in (obj.get("metadata") or {}).items()},
            errors=list((obj.get("errors") or {}).get("data") or []),
            files={k: str(obj[k]) for k in FILE_ROLES if obj.get(k)},
            model=str(obj["model"]) if obj.get("model") else None,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MalformedResponse(f"unreadable OpenAI batch object: {exc!r}") from exc


class _LineResponse(msgspec.Struct):
    status_code: int = 0
    body: msgspec.Raw = jsonl.NULL


class _LineError(msgspec.Struct):
    code: str | None = None
    message: str | None = None


class _Line(msgspec.Struct):
    """One line of an output or error file: only the fields we read."""

    custom_id: str
    response: _LineResponse | None = None
    error: _LineError | None = None


_LINES = msgspec.json.Decoder(_Line)


class _InputBody(msgspec.Struct):
    model: str | None = None


class _InputLine(msgspec.Struct):
    """One line of a batch input file: only the fields matching reads."""

    custom_id: str
    body: _InputBody | None = None


_INPUT_LINES = msgspec.json.Decoder(_InputLine)


def request_ids(block: bytes) -> list[RequestId]:
    """The custom ids and models of a block of a batch input file."""
    lines = jsonl.decode_lines(_INPUT_LINES, block, "OpenAI")
    return [RequestId(line.custom_id, line.body.model if line.body else None) for line in lines]


def result_lines(block: bytes) -> list[ResultLine]:
    """The lines of a block of an output or error file."""
    return [result_line(line) for line in jsonl.decode_lines(_LINES, block, "OpenAI")]


def result_line(line: _Line) -> ResultLine:
    response = line.response
    status = response.status_code if response is not None else 0
    if response is not None and 200 <= status < 300:
        body = bytes(response.body)
        return ResultLine(line.custom_id, "succeeded", body, jsonl.usage_of(body, "OpenAI"), None, True)
    if response is not None:
        try:
            err = (orjson.loads(bytes(response.body)) or {}).get("error") or {}
            retriable = status in (408, 429) or status >= 500
            error = {
                "type": err.get("type") or f"http_{status}",
                "message": err.get("message") or "",
                "code": err.get("code"),
                "status": status,
            }
        except (orjson.JSONDecodeError, AttributeError) as exc:
            raise MalformedResponse(f"unreadable OpenAI batch result line: {exc!r}") from exc
        return ResultLine(line.custom_id, "retriable" if retriable else "failed", None, None, error, False)
    code = line.error.code if line.error is not None else None
    message = (line.error.message if line.error is not None else None) or ""
    error = {"type": code or "batch_error", "message": message, "code": code}
    outcome: Outcome = "retriable" if code in RETRIABLE_LINE_CODES else "failed"
    return ResultLine(line.custom_id, outcome, None, None, error, False)


class OpenAIAdapter(BatchAdapter):
    """One OpenAI (or OpenAI-compatible) account."""

    kind = "openai"
    batches_path = "/batches"
    line_format = batch_input.OPENAI_FORMAT
    list_page = LIST_PAGE
    list_cursor = "after"
    default_auth_header = "Authorization"
    batch_info = staticmethod(batch_info)

    def batch_endpoint(self, endpoint: str) -> str:
        return batch_endpoint(endpoint)

    def sync_path(self, endpoint: str) -> str:
        return sync_path(endpoint)

    async def create(self, spooled: BatchInput, batch_id: str, before_create: BeforeCreate) -> dict[str, Any]:
        """Upload the input as a ``purpose=batch`` file, then create the batch on it."""
        # Re-sending an upload at worst leaves an unused file behind, so it is retried freely.
        with phase("batch.upload", **{"batchshift.input_bytes": spooled.nbytes}):
            uploaded = await self.account.call_json(
                "POST",
                "/files",
                idempotent=True,
                files={"file": (f"{batch_id}.jsonl", spooled.file, "application/jsonl")},
                data=self.upload_form(),
            )
        file_id = uploaded.get("id")
        if not isinstance(file_id, str):
            raise MalformedResponse("file upload answered without an id")
        try:
            if before_create is not None:
                await before_create()
            return await self.account.create(
                "/batches",
                batch_id,
                json={
                    "input_file_id": file_id,
                    "endpoint": spooled.endpoint,
                    "completion_window": "24h",
                    "metadata": batch_metadata(batch_id),
                },
            )
        except (BatchCreateUnknown, MalformedResponse):
            raise  # a batch may exist on the file: the file is deleted once that batch ends
        except Exception:
            # Stopped before the create, or refused by it: no batch uses the upload (best effort).
            await self._drop_upload(file_id)
            raise

    def upload_form(self) -> dict[str, str]:
        """The form fields besides the file of a batch input upload."""
        return {"purpose": "batch"}

    async def _drop_upload(self, file_id: str) -> None:
        if self.account.settings.delete_input_files:
            with contextlib.suppress(ProviderError):
                await self.delete_stored(file_id)

    async def delete_stored(self, object_id: str) -> None:
        """Delete a file (``DELETE /files/{id}``)."""
        answer = await self.delete(f"/files/{object_id}")
        if answer is not None and answer.get("deleted") is not True:
            raise MalformedResponse(f"DELETE /files/{object_id}: the provider did not confirm the deletion")

    async def request_ids(self, info: BatchInfo) -> AsyncIterator[list[RequestId]]:
        """The input file's custom ids and models (ProviderNotFound once the file is deleted)."""
        file_id = info.files.get("input_file_id")
        if not file_id:
            raise MalformedResponse(f"batch {info.provider_batch_id} names no input file")
        async with self.account.stream(f"/files/{file_id}/content") as response:
            async for block in http.iter_line_blocks(response):
                yield request_ids(block)

    async def result_blocks(self, provider_batch_id: str) -> AsyncIterator[list[ResultLine]]:
        """Every line of the output file, then of the error file; nothing for a batch that failed validation."""
        obj = await self.ended(provider_batch_id)
        for key in ("output_file_id", "error_file_id"):
            file_id = obj.get(key)
            if not file_id:
                continue
            async with self.account.stream(f"/files/{file_id}/content") as response:
                async for block in http.iter_line_blocks(response):
                    yield result_lines(block)
