"""The adapter for Anthropic's Messages API and Message Batches.

A batch is created in one call carrying every request (``{"requests": [{custom_id, params}]}``),
streamed from a spooled temporary file. ``base_url`` is the host without the API version, as in
the official SDK (``https://api.anthropic.com``). Anthropic has no batch metadata, so
:attr:`BatchInfo.metadata` is always empty; reconciliation finds candidates by creation time and
size and verifies them by the custom ids (and models) of their results, readable once ended.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import msgspec

from config.settings import ProviderSettings
from workers import http
from workers.errors import BatchNotEnded, MalformedResponse, ProviderNotFound
from workers.providers import batch_input, jsonl
from workers.providers.adapter import BatchAdapter, BeforeCreate
from workers.providers.base import BatchInfo, Outcome, RequestId, ResultLine, Status
from workers.providers.batch_input import BatchInput

BATCHES = "/v1/messages/batches"
LIST_PAGE = 1000  # Anthropic's largest page
# Errored results Anthropic says must be fixed before resending; every other error type may be retried.
PERMANENT_ERROR_TYPES = frozenset({"invalid_request_error", "authentication_error", "permission_error"})


def _epoch(value: Any) -> float | None:
    if value is None:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def batch_info(obj: dict[str, Any]) -> BatchInfo:
    """A MessageBatch object, normalised (an ended batch is cancelled, expired or completed)."""
    try:
        raw = str(obj["processing_status"])
        counts = obj.get("request_counts") or {}
        succeeded, errored = int(counts.get("succeeded") or 0), int(counts.get("errored") or 0)
        canceled, expired = int(counts.get("canceled") or 0), int(counts.get("expired") or 0)
        status: Status
        if raw == "in_progress":
            status = "in_progress"
        elif raw == "canceling":
            status = "cancelling"
        elif raw != "ended":
            raise MalformedResponse(f"unknown Anthropic processing_status {raw!r}")
        elif obj.get("cancel_initiated_at"):
            status = "cancelled"
        else:
            status = "expired" if expired else "completed"
        return BatchInfo(
            provider_batch_id=str(obj["id"]),
            status=status,
            raw_status=raw,
            total=int(counts.get("processing") or 0) + succeeded + errored + canceled + expired,
            completed=succeeded,
            failed=errored + canceled + expired,
            created_at=_epoch(obj.get("created_at")),
            ended_at=_epoch(obj.get("ended_at")),
            files={"results_batch_id": str(obj["id"])} if raw == "ended" else {},
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MalformedResponse(f"unreadable Anthropic batch object: {exc!r}") from exc


class _Model(msgspec.Struct):
    model: str | None = None


_MODEL = msgspec.json.Decoder(_Model)


def answer_model(body: bytes | None) -> str | None:
    """The model a Message answer names; None without an answer."""
    if body is None:
        return None
    try:
        return _MODEL.decode(body).model
    except msgspec.MsgspecError as exc:
        raise MalformedResponse(f"unreadable Anthropic result body: {exc}") from exc


class _Result(msgspec.Struct):
    type: str
    message: msgspec.Raw = jsonl.NULL
    error: Any = None


class _Line(msgspec.Struct):
    """One line of a batch's results: only the fields we read."""

    custom_id: str
    result: _Result


_LINES = msgspec.json.Decoder(_Line)


def result_lines(block: bytes) -> list[ResultLine]:
    """The lines of a block of a batch's results."""
    return [result_line(line) for line in jsonl.decode_lines(_LINES, block, "Anthropic")]


def result_line(line: _Line) -> ResultLine:
    result, custom_id = line.result, line.custom_id
    kind = result.type
    if kind == "succeeded":
        body = bytes(result.message)
        return ResultLine(custom_id, "succeeded", body, jsonl.usage_of(body, "Anthropic"), None, True)
    if kind == "errored":
        try:
            err = (result.error or {}).get("error") or {}
            err_type = err.get("type") or "api_error"
            message = err.get("message") or ""
        except AttributeError as exc:
            raise MalformedResponse(f"unreadable Anthropic batch result line: {exc!r}") from exc
        outcome: Outcome = "failed" if err_type in PERMANENT_ERROR_TYPES else "retriable"
        return ResultLine(
            custom_id, outcome, None, None, {"type": err_type, "message": message, "code": None}, False
        )
    if kind in ("canceled", "expired"):
        error = {"type": kind, "message": f"request {kind} before it ran", "code": None}
        return ResultLine(custom_id, "retriable", None, None, error, False)
    raise MalformedResponse(f"unreadable Anthropic batch result line: unknown result type {kind!r}")


class AnthropicAdapter(BatchAdapter):
    """One Anthropic account."""

    kind = "anthropic"
    batches_path = BATCHES
    line_format = batch_input.ANTHROPIC_FORMAT
    list_page = LIST_PAGE
    list_cursor = "after_id"
    default_auth_header = "x-api-key"
    batch_info = staticmethod(batch_info)

    def __init__(self, name: str, settings: ProviderSettings, client: httpx.AsyncClient) -> None:
        super().__init__(name, settings, client)
        self.account.headers["anthropic-version"] = settings.anthropic_version

    async def create(self, spooled: BatchInput, batch_id: str, before_create: BeforeCreate) -> dict[str, Any]:
        """One call carries every request (batches run on the Messages API only)."""
        if before_create is not None:
            await before_create()
        return await self.account.create(
            BATCHES,
            batch_id,
            content=batch_input.Rereadable(spooled),
            headers={"content-type": "application/json", "content-length": str(spooled.nbytes)},
        )

    async def fetch(self, provider_batch_id: str) -> dict[str, Any]:
        try:
            return await super().fetch(provider_batch_id)
        except ProviderNotFound as exc:
            # Anthropic can answer 404 for a moment on a batch it just created: worth asking again.
            raise ProviderNotFound(exc.status, exc.type, exc.message, True, exc.retry_after) from exc

    async def delete_stored(self, object_id: str) -> None:
        """Delete an ended batch, its requests and results with it (``DELETE /v1/messages/batches/{id}``)."""
        await self.delete(f"{BATCHES}/{object_id}")

    async def request_ids(self, info: BatchInfo) -> AsyncIterator[list[RequestId]]:
        """The custom ids of an ended batch's results, with the model each succeeded answer names
        (Anthropic shows neither model nor ids of a batch before it ends: BatchNotEnded)."""
        if not info.ended:
            raise BatchNotEnded(info.provider_batch_id, info.raw_status)
        async for block in self.result_blocks(info.provider_batch_id):
            yield [RequestId(line.custom_id, answer_model(line.body)) for line in block]

    async def result_blocks(self, provider_batch_id: str) -> AsyncIterator[list[ResultLine]]:
        """Stream the results JSONL of an ended batch.

        Read from our own base URL rather than the batch's ``results_url``, so the API key is
        never sent to a host that is not configured.
        """
        await self.ended(provider_batch_id)
        path = f"{BATCHES}/{provider_batch_id}/results"
        async with self.account.stream(path, headers={"accept": "application/binary"}) as response:
            async for block in http.iter_line_blocks(response):
                yield result_lines(block)
