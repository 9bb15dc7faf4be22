"""A client batch's result files, streamed from the ledger a chunk of lines at a time.

OpenAI's output file holds a line per succeeded request, its error file one per failed, cancelled
or (the window passed) expired request: ``{"id", "custom_id", "response": {"status_code",
"request_id", "body"}, "error"}``. As in OpenAI's, a request the provider's API answered with an
HTTP error has that ``response`` (status and error body) and ``error: null``; one that never got an
answer (cancelled, expired) has ``response: null`` and the ``error``. Anthropic's results hold every request: ``{"custom_id",
"result": {"type": "succeeded", "message"} | errored | canceled | expired}``. A stored result body
is written into its line byte for byte, as the provider returned it; nothing is built whole.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson
from redis.asyncio import Redis

from scheduler.compat.batches import ClientBatch, ClientBatches
from scheduler.ledger import keys

# Lines read per round trip.
CHUNK: Final = 500
_JOB_FIELDS: Final = ("state", "custom_id", "error")

FileKind = Literal["output", "errors", "anthropic"]


@dataclass(frozen=True, slots=True)
class LineOutcome:
    """What became of one line: a job's state and result, or a refusal at intake."""

    job_id: str | None
    custom_id: str
    state: str  # succeeded | failed | cancelled | a live state | refused | missing
    result: bytes | None
    error: dict[str, Any] | None


async def outcomes(redis: Redis, store: ClientBatches, batch: ClientBatch) -> AsyncIterator[LineOutcome]:
    """Every line's outcome in input order, CHUNK lines per round trip."""
    start = 0
    while True:
        entries = await store.line_entries(batch.id, start, CHUNK)
        if not entries:
            return
        job_ids = [e for e in entries if not e.startswith("!")]
        async with redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(keys.job(job_id), list(_JOB_FIELDS))
                pipe.get(keys.result(job_id))
            replies = await pipe.execute()
        found = {job_id: (replies[2 * i], replies[2 * i + 1]) for i, job_id in enumerate(job_ids)}
        for entry in entries:
            if entry.startswith("!"):
                refused = orjson.loads(entry[1:])
                yield LineOutcome(None, refused["custom_id"], "refused", None, refused["error"])
                continue
            (state, custom_id, error), result = found[entry]
            yield LineOutcome(
                entry,
                custom_id.decode() if custom_id else "",
                state.decode() if state else "missing",
                result,
                orjson.loads(error) if error else None,
            )
        start += len(entries)


def _openai_error(outcome: LineOutcome, status: str) -> dict[str, Any]:
    if outcome.state == "cancelled" or (outcome.state == "missing" and status == "cancelled"):
        return {
            "code": "batch_cancelled",
            "message": "This request was not executed because the batch was cancelled.",
        }
    if outcome.state in ("queued", "batched", "sync"):
        code = "batch_expired" if status == "expired" else "batch_cancelled"
        return {"code": code, "message": "This request could not be executed before the batch ended."}
    if outcome.state == "missing":
        return {"code": "result_expired", "message": "This request's record is past its retention."}
    error = outcome.error or {}
    return {
        "code": str(error.get("code") or error.get("type") or "request_failed"),
        "message": str(error.get("message") or "The request failed."),
    }


def _http_failure(outcome: LineOutcome) -> tuple[int, dict[str, Any]] | None:
    """A line the provider's API answered with an HTTP error (its status kept on the job's error):
    that status and OpenAI's error body, rebuilt from the error's fields (the body itself is not
    stored). None for every other end (cancelled, expired, refused, a batch-level line error)."""
    error = outcome.error or {}
    http_status = error.get("status")
    if outcome.state != "failed" or not isinstance(http_status, int) or http_status < 400:
        return None
    body = {
        "error": {
            "message": str(error.get("message") or ""),
            "type": str(error.get("type") or "invalid_request_error"),
            "param": error.get("param"),
            "code": error.get("code"),
        }
    }
    return http_status, body


def _line_id(outcome: LineOutcome, index: int) -> str:
    return (
        f"batch_req_{outcome.job_id.removeprefix('job_')}" if outcome.job_id else f"batch_req_refused_{index}"
    )


async def openai_file(
    redis: Redis, store: ClientBatches, batch: ClientBatch, kind: Literal["output", "errors"], now_ms: int
) -> AsyncIterator[bytes]:
    """OpenAI's output (``output``) or error (``errors``) file of a batch, a chunk of lines at a time."""
    status = batch.status(now_ms)
    out: list[bytes] = []
    index = 0
    async for outcome in outcomes(redis, store, batch):
        index += 1
        head = (
            b'{"id":'
            + orjson.dumps(_line_id(outcome, index))
            + b',"custom_id":'
            + orjson.dumps(outcome.custom_id)
        )
        succeeded = outcome.state == "succeeded" and outcome.result is not None
        if kind == "output" and succeeded:
            assert outcome.result is not None
            request_id = orjson.dumps(outcome.job_id)
            out.append(
                head
                + b',"response":{"status_code":200,"request_id":'
                + request_id
                + b',"body":'
                + outcome.result
                + b'},"error":null}\n'
            )
        elif kind == "errors" and not succeeded:
            http = _http_failure(outcome)
            if http is not None:  # as OpenAI writes a request its API refused: the answer, no error
                out.append(
                    head
                    + b',"response":{"status_code":'
                    + str(http[0]).encode()
                    + b',"request_id":'
                    + orjson.dumps(outcome.job_id)
                    + b',"body":'
                    + orjson.dumps(http[1])
                    + b'},"error":null}\n'
                )
            else:
                out.append(
                    head
                    + b',"response":null,"error":'
                    + orjson.dumps(_openai_error(outcome, status))
                    + b"}\n"
                )
        if len(out) >= CHUNK:
            yield b"".join(out)
            out = []
    if out:
        yield b"".join(out)


def _anthropic_result(outcome: LineOutcome, status: str) -> bytes:
    if outcome.state == "succeeded" and outcome.result is not None:
        return b'{"type":"succeeded","message":' + outcome.result + b"}"
    live = outcome.state in ("queued", "batched", "sync")
    never_made = outcome.state == "missing" and status == "cancelled"  # an abandoned create's line
    if outcome.state == "cancelled" or never_made or (live and status != "expired"):
        return b'{"type":"canceled"}'
    if live:
        return b'{"type":"expired"}'
    error = outcome.error or {}
    detail = {
        "type": str(error.get("type") or "api_error"),
        "message": str(error.get("message") or "The request failed."),
    }
    return b'{"type":"errored","error":' + orjson.dumps({"type": "error", "error": detail}) + b"}"


async def anthropic_results(
    redis: Redis, store: ClientBatches, batch: ClientBatch, now_ms: int
) -> AsyncIterator[bytes]:
    """Anthropic's results JSONL: one line per request, in request order."""
    status = batch.status(now_ms)
    out: list[bytes] = []
    async for outcome in outcomes(redis, store, batch):
        out.append(
            b'{"custom_id":'
            + orjson.dumps(outcome.custom_id)
            + b',"result":'
            + _anthropic_result(outcome, status)
            + b"}\n"
        )
        if len(out) >= CHUNK:
            yield b"".join(out)
            out = []
    if out:
        yield b"".join(out)


async def file_size(chunks: AsyncIterator[bytes]) -> int:
    """The size of a derived file (its bytes are streamed once and counted, not kept)."""
    return sum([len(chunk) async for chunk in chunks])
