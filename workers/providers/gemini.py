"""The adapter for the Gemini Developer API: batch mode, the Files API and ``generateContent``.

A job's body is a GenerateContentRequest plus ``model``; the model moves into the URL
(``/v1beta/models/{model}:batchGenerateContent`` and ``:generateContent``) and out of the request.
A batch input up to ``max_inline_batch_bytes`` (20 MB: Gemini's inline limit) goes inline in the
create call; a larger one is uploaded first as JSONL (``{"key", "request"}`` a line) through the
Files API's resumable upload. ``base_url`` is the host without the version path, as in the
``google-genai`` SDK; the key is sent as ``x-goog-api-key``.

A batch is a long-running operation whose ``metadata`` holds its state (``BATCH_STATE_*``), its
``batchStats`` and its ``output`` (a responses file or inlined responses). Creation is not
idempotent, so our batch id goes in ``displayName``, which reconciliation reads back as metadata.
An expired batch (pending or running for 48 h) has no results at all: ingestion sends every job
back to its lane or on to sync. After ingestion the batch and its responses file are deleted.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import msgspec
import orjson

from config.tracing import phase
from workers import http
from workers.errors import InvalidBatchInput, MalformedResponse, ProviderNotFound
from workers.providers import batch_input, jsonl
from workers.providers.account import parse_object
from workers.providers.adapter import BatchAdapter, BeforeCreate
from workers.providers.base import (
    BATCH_ID_METADATA_KEY,
    BatchInfo,
    BatchLine,
    RequestId,
    ResultLine,
    Status,
    SyncResult,
)
from workers.providers.batch_input import BatchInput

VERSION = "/v1beta"
BATCHES = f"{VERSION}/batches"
LIST_PAGE = 100
STATES: dict[str, Status] = {
    "BATCH_STATE_PENDING": "validating",
    "BATCH_STATE_RUNNING": "in_progress",
    "BATCH_STATE_SUCCEEDED": "completed",
    "BATCH_STATE_FAILED": "failed",
    "BATCH_STATE_CANCELLED": "cancelled",
    "BATCH_STATE_EXPIRED": "expired",
}
# Line errors that are about the capacity, not the request: the work may be redone.
RETRIABLE_LINE_CODES = frozenset({408, 429, 500, 502, 503, 504})
ERROR_CODES = {
    "RESOURCE_EXHAUSTED": "token_limit_exceeded",
    "UNAVAILABLE": "server_error",
    "INTERNAL": "server_error",
    "DEADLINE_EXCEEDED": "timeout",
}
_FRACTION = re.compile(r"(\.\d{6})\d+")


def _epoch(value: Any) -> float | None:
    """Google's RFC 3339 timestamp (up to nanoseconds) as epoch seconds."""
    if not value:
        return None
    return datetime.fromisoformat(_FRACTION.sub(r"\1", str(value)).replace("Z", "+00:00")).timestamp()


def _count(stats: dict[str, Any], key: str) -> int:
    return int(stats.get(key) or 0)  # int64 fields arrive as strings


def batch_error(error: dict[str, Any]) -> dict[str, Any]:
    """A failed batch's ``google.rpc.Status`` as a batch-level error: quota (``RESOURCE_EXHAUSTED``)
    is the lane's enqueued-token limit, as OpenAI's ``token_limit_exceeded``; overload a server error."""
    status = str(error.get("status") or "")
    code = ERROR_CODES.get(status, status or str(error.get("code") or "batch_failed"))
    return {"code": code, "message": str(error.get("message") or status)}


def batch_info(obj: dict[str, Any]) -> BatchInfo:
    """A batch operation (create, get, list), normalised."""
    try:
        meta = obj["metadata"]
        raw = str(meta["state"])
        status = STATES.get(raw)
        if status is None:
            raise MalformedResponse(f"unknown Gemini batch state {raw!r}")
        name = str(meta.get("name") or obj["name"])
        stats = meta.get("batchStats") or {}
        output = meta.get("output") or obj.get("response") or {}
        files = {}
        input_file = (meta.get("inputConfig") or {}).get("fileName")
        if input_file:
            files["input_file_id"] = str(input_file)
        if output.get("responsesFile"):
            files["output_file_id"] = str(output["responsesFile"])
        if status in ("completed", "cancelled", "expired", "failed"):
            files["results_batch_id"] = name.removeprefix("batches/")
        display = meta.get("displayName")
        model = meta.get("model")
        return BatchInfo(
            provider_batch_id=name.removeprefix("batches/"),
            status=status,
            raw_status=raw,
            total=_count(stats, "requestCount"),
            completed=_count(stats, "successfulRequestCount"),
            failed=_count(stats, "failedRequestCount"),
            created_at=_epoch(meta.get("createTime")),
            ended_at=_epoch(meta.get("endTime"))
            if status in ("completed", "cancelled", "expired", "failed")
            else None,
            metadata={BATCH_ID_METADATA_KEY: str(display)} if display else {},
            errors=[batch_error(obj["error"])] if isinstance(obj.get("error"), dict) else [],
            files=files,
            model=str(model).removeprefix("models/") if model else None,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MalformedResponse(f"unreadable Gemini batch operation: {exc!r}") from exc


class _Model(msgspec.Struct):
    model: str | None = None


_MODEL = msgspec.json.Decoder(_Model)


def request_of(body: bytes) -> tuple[str, bytes]:
    """(model, GenerateContentRequest without ``model``) of a job body."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedResponse(f"job body is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("model"), str):
        raise MalformedResponse("job body names no model")
    model = str(doc.pop("model")).removeprefix("models/")
    return model, orjson.dumps(doc)


class GeminiFormat(batch_input.BatchFormat):
    """JSONL, one ``{"key", "request"}`` object a line; the request leaves out ``model``."""

    def middle(self, endpoint: str) -> bytes:
        return b',"request":'

    def check(self, line: BatchLine) -> bytes:
        body = super().check(line)
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidBatchInput(line.custom_id, f"body is not JSON: {exc}") from exc
        doc.pop("model", None)
        return orjson.dumps(doc)


GEMINI_FORMAT = GeminiFormat(
    head=b"", separator=b"\n", tail=b"\n", custom_id=None, opening=b'{"key":', closing=b"}"
)


class _Usage(msgspec.Struct):
    usageMetadata: dict[str, Any] | None = None  # noqa: N815 (Gemini's field name)


_USAGE = msgspec.json.Decoder(_Usage)


def usage_of(body: bytes) -> dict[str, Any] | None:
    """The ``usageMetadata`` of a GenerateContentResponse, without building the rest of it."""
    try:
        return _USAGE.decode(body).usageMetadata
    except msgspec.MsgspecError as exc:
        raise MalformedResponse(f"unreadable Gemini result body: {exc}") from exc


class _Line(msgspec.Struct):
    """One line of a responses file (``key``) or one inlined response (``metadata.key``)."""

    key: str | None = None
    metadata: dict[str, Any] | None = None
    response: msgspec.Raw = jsonl.NULL
    error: dict[str, Any] | None = None


_LINES = msgspec.json.Decoder(_Line)


def result_lines(block: bytes) -> list[ResultLine]:
    """The lines of a block of a responses file."""
    return [result_line(line) for line in jsonl.decode_lines(_LINES, block, "Gemini")]


def result_line(line: _Line) -> ResultLine:
    key = line.key if line.key is not None else (line.metadata or {}).get("key")
    if not isinstance(key, str):
        raise MalformedResponse("unreadable Gemini batch result line: no key")
    if line.error is None and bytes(line.response) != b"null":
        body = bytes(line.response)
        return ResultLine(key, "succeeded", body, usage_of(body), None, True)
    err = line.error or {}
    code = err.get("code")
    error = {
        "type": str(err.get("status") or "batch_error"),
        "message": str(err.get("message") or ""),
        "code": code,
    }
    retriable = isinstance(code, int) and code in RETRIABLE_LINE_CODES
    return ResultLine(key, "retriable" if retriable else "failed", None, None, error, False)


class GeminiAdapter(BatchAdapter):
    """One Gemini Developer API account."""

    kind = "gemini"
    batches_path = BATCHES
    line_format = GEMINI_FORMAT
    list_page = LIST_PAGE
    list_cursor = "pageToken"
    default_auth_header = "x-goog-api-key"
    batch_info = staticmethod(batch_info)

    async def submit_batch(
        self,
        lines: AsyncIterable[BatchLine] | Iterable[BatchLine],
        *,
        endpoint: str,
        batch_id: str,
        before_create: BeforeCreate = None,
    ) -> BatchInfo:
        """Spool the lines, noting the model of the first (a batch runs one model: its lane's)."""
        models: list[str] = []

        async def noted() -> AsyncIterator[BatchLine]:
            if isinstance(lines, AsyncIterable):
                async for line in lines:
                    _note(line)
                    yield line
            else:
                for line in lines:
                    _note(line)
                    yield line

        def _note(line: BatchLine) -> None:
            if not models:
                try:
                    model = _MODEL.decode(line.body).model
                except msgspec.MsgspecError as exc:
                    raise InvalidBatchInput(line.custom_id, f"body is not JSON: {exc}") from exc
                if not model:
                    raise InvalidBatchInput(line.custom_id, "body names no model")
                models.append(model.removeprefix("models/"))

        spool = batch_input.spool(noted(), self.line_format, **self.input_terms(endpoint))
        with await spool as spooled:
            return self.batch_info(await self._create(models[0], spooled, batch_id, before_create))

    async def _create(
        self, model: str, spooled: BatchInput, batch_id: str, before_create: BeforeCreate
    ) -> dict[str, Any]:
        """Inline when small enough, else upload the JSONL first; ``displayName`` carries our id."""
        batch: dict[str, Any] = {"displayName": batch_id}
        if spooled.nbytes <= self.account.settings.max_inline_batch_bytes:
            spooled.file.seek(0)
            items = []
            for raw in spooled.file.read().splitlines():
                if raw.strip():
                    line = orjson.loads(raw)
                    items.append({"request": line["request"], "metadata": {"key": line["key"]}})
            batch["inputConfig"] = {"requests": {"requests": items}}
        else:
            with phase("batch.upload", **{"batchshift.input_bytes": spooled.nbytes}):
                batch["inputConfig"] = {"fileName": await self._upload(spooled, batch_id)}
        if before_create is not None:
            await before_create()
        return await self.account.create(
            f"{VERSION}/models/{model}:batchGenerateContent", batch_id, json={"batch": batch}
        )

    async def _upload(self, spooled: BatchInput, batch_id: str) -> str:
        """The Files API's resumable upload: a start call answers the session URL, one call sends
        every byte and finalizes. Re-sending leaves at worst an unused file, so both are retried."""
        started = await self.account.call(
            "POST",
            f"/upload{VERSION}/files",
            idempotent=True,
            json={"file": {"displayName": batch_id}},
            headers={
                "x-goog-upload-protocol": "resumable",
                "x-goog-upload-command": "start",
                "x-goog-upload-header-content-length": str(spooled.nbytes),
                "x-goog-upload-header-content-type": "application/jsonl",
            },
        )
        session = started.headers.get("x-goog-upload-url")
        if not session:
            raise MalformedResponse("file upload start answered no x-goog-upload-url")
        # Sent to our own base URL, whatever host the session URL names: the key goes nowhere else.
        parts = urlsplit(session)
        path = parts.path.removeprefix(urlsplit(self.account.base).path or "")
        finished = await self.account.call(
            "POST",
            f"{path}?{parts.query}" if parts.query else path,
            idempotent=True,
            content=batch_input.Rereadable(spooled),
            headers={
                "x-goog-upload-command": "upload, finalize",
                "x-goog-upload-offset": "0",
                "content-length": str(spooled.nbytes),
            },
        )
        name = (parse_object(finished.content, "file upload").get("file") or {}).get("name")
        if not isinstance(name, str):
            raise MalformedResponse("file upload answered no file name")
        return name

    async def list_batches(self, limit: int = 100) -> list[BatchInfo]:
        """The newest batches, following ``nextPageToken``."""
        found: list[dict[str, Any]] = []
        params: dict[str, str | int] = {}
        while len(found) < limit:
            params["pageSize"] = min(self.list_page, limit - len(found))
            page = await self.account.call_json("GET", BATCHES, idempotent=True, params=params)
            found.extend(page.get("operations") or [])
            token = page.get("nextPageToken")
            if not token:
                break
            params["pageToken"] = str(token)
        return [self.batch_info(obj) for obj in found[:limit]]

    async def cancel_batch(self, provider_batch_id: str) -> BatchInfo:
        """``:cancel`` answers nothing useful; the batch is read back after it."""
        await self.account.call_json("POST", f"{BATCHES}/{provider_batch_id}:cancel", idempotent=True)
        return await self.get_batch(provider_batch_id)

    async def delete_stored(self, object_id: str) -> None:
        """Delete a file (``files/…``: the uploaded input, the responses file) or an ended batch."""
        if object_id.startswith("files/"):
            await self.delete(f"{VERSION}/{object_id}")
        else:
            await self.delete(f"{BATCHES}/{object_id}")

    async def request_ids(self, info: BatchInfo) -> AsyncIterator[list[RequestId]]:
        """The keys of an ended batch's results. Gemini shows no keys before then, never gives an
        uploaded file back, and keeps nothing of an expired or cancelled batch: then the ids are
        not to be had (ProviderNotFound), and only our id in ``displayName`` can tell the batch."""
        shown = False
        if info.ended:
            async for block in self.result_blocks(info.provider_batch_id):
                shown = True
                yield [RequestId(line.custom_id, info.model) for line in block]
        if not shown:
            raise ProviderNotFound(
                404, "NOT_FOUND", f"Gemini shows no request keys of {info.provider_batch_id}", False
            )

    async def result_blocks(self, provider_batch_id: str) -> AsyncIterator[list[ResultLine]]:
        """The responses file, streamed; or the inlined responses; nothing for a batch that
        expired, failed or was cancelled (Gemini keeps no partial results)."""
        obj = await self.ended(provider_batch_id)
        output = (obj.get("metadata") or {}).get("output") or obj.get("response") or {}
        responses_file = output.get("responsesFile")
        if responses_file:
            path = f"/download{VERSION}/{responses_file}:download"
            async with self.account.stream(path, params={"alt": "media"}) as response:
                async for block in http.iter_line_blocks(response):
                    yield result_lines(block)
            return
        inlined = (output.get("inlinedResponses") or {}).get("inlinedResponses") or []
        if inlined:
            yield result_lines(b"\n".join(orjson.dumps(item) for item in inlined))

    async def send_sync(
        self,
        endpoint: str,
        body: bytes,
        *,
        service_tier: str | None = None,
        max_retries: int | None = None,
        read_timeout: float | None = None,
    ) -> SyncResult:
        """``generateContent`` with the model in the path; ``service_tier`` is not sold here."""
        model, request = request_of(body)
        response = await self.post_sync(
            f"{VERSION}/models/{model}:{endpoint}", request, max_retries, read_timeout
        )
        doc = parse_object(response.content, f"POST {endpoint}")
        usage = doc.get("usageMetadata")
        return SyncResult(
            response.content,
            usage if isinstance(usage, dict) else None,
            response.status_code,
            dict(response.headers),
        )
