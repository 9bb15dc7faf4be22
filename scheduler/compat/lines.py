"""A client batch's lines into jobs: checked as OpenAI checks a batch input file (or as Anthropic
checks ``requests``), routed to a provider by model, admitted and enqueued as ordinary jobs.

Every line must pass before any job is made: a bad line fails the whole batch with OpenAI's line
errors (``errors.data``: ``code``, ``message``, ``param``, ``line``), and nothing is enqueued. A
line admission refuses (a budget envelope, the tenant's lane cap) becomes a failed line of a batch
that runs, with the refusal in the error file.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson
import structlog
from redis.exceptions import ResponseError

from config.settings import Settings
from scheduler.compat.batches import ClientBatch
from scheduler.costs.admission import AdmissionGate
from scheduler.errors import BatchshiftError
from scheduler.intake import ENDPOINTS, admit, refusal, tag_allowed, validate
from scheduler.ledger.jobs import NewJob
from scheduler.ledger.ledger import EnqueueOutcome, Ledger
from scheduler.planning import lanes

# OpenAI stops listing line errors after this many.
log = structlog.get_logger(__name__)

MAX_LINE_ERRORS: Final = 100
# A line the job store refused while others of its chunk were stored (its error entry's message).
STORE_FAILED: Final = "the job store refused this line (out of memory or busy); it was not enqueued"
# Jobs enqueued per pipeline.
ENQUEUE_CHUNK: Final = 1000
UTF8_BOM: Final = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class Line:
    """One request of a client batch: its 1-based position, the client's id and the request body."""

    number: int
    custom_id: str
    body: dict[str, Any]


class LineErrors:
    """OpenAI's batch ``errors.data``, capped."""

    def __init__(self) -> None:
        self.data: list[dict[str, Any]] = []
        self.count = 0

    def add(self, code: str, message: str, line: int | None = None, param: str | None = None) -> None:
        self.count += 1
        if len(self.data) < MAX_LINE_ERRORS:
            self.data.append({"code": code, "message": message, "param": param, "line": line})


async def openai_lines(
    raw_lines: AsyncIterable[bytes], endpoint: str, errors: LineErrors, max_requests: int
) -> AsyncIterator[Line]:
    """The requests of an OpenAI batch input file, as they are read; problems go to ``errors`` by
    line number (a request is yielded only when its own line is fine)."""
    seen: set[str] = set()
    number = count = 0
    async for raw in raw_lines:
        number += 1
        if number == 1:  # a UTF-8 byte order mark, as Windows editors and PowerShell write one
            raw = raw.removeprefix(UTF8_BOM)
        if not raw.strip():
            continue
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            errors.add("invalid_json_line", "This line is not parseable as valid JSON.", number)
            continue
        if not isinstance(line, dict):
            errors.add("invalid_json_line", "Each line must be a JSON object.", number)
            continue
        custom_id = line.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            errors.add(
                "missing_required_parameter", "Missing required parameter: 'custom_id'.", number, "custom_id"
            )
            continue
        if custom_id in seen:
            errors.add("duplicate_custom_id", f"The custom_id {custom_id!r} is used more than once.", number)
            continue
        seen.add(custom_id)
        if line.get("method") != "POST":
            errors.add("invalid_method", "Only the POST method is supported.", number, "method")
            continue
        if line.get("url") != endpoint:
            errors.add(
                "url_mismatch",
                "The URL provided for this request does not match the batch endpoint.",
                number,
                "url",
            )
            continue
        body = line.get("body")
        if not isinstance(body, dict):
            errors.add("invalid_request", "The line's body must be a JSON object.", number, "body")
            continue
        count += 1
        yield Line(number, custom_id, body)
    if not count and not errors.count:
        errors.add("empty_file", "The input file is empty.")
    if count > max_requests:
        errors.add("too_many_requests", f"A batch may hold at most {max_requests} requests.")


async def chunks(lines: AsyncIterable[Line], size: int = ENQUEUE_CHUNK) -> AsyncIterator[list[Line]]:
    """``lines`` in lists of ``size``: the unit a batch's lines are checked and enqueued in."""
    chunk: list[Line] = []
    async for line in lines:
        chunk.append(line)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def anthropic_lines(requests: object, errors: LineErrors, max_requests: int) -> list[Line]:
    """The ``requests`` of an Anthropic Message Batch create; problems go to ``errors`` by index."""
    if not isinstance(requests, list) or not requests:
        errors.add("invalid_request", "requests: a non-empty list is required", param="requests")
        return []
    if len(requests) > max_requests:
        errors.add(
            "invalid_request", f"requests: at most {max_requests} requests per batch", param="requests"
        )
        return []
    lines: list[Line] = []
    seen: set[str] = set()
    for index, item in enumerate(requests):
        where = f"requests.{index}"
        if not isinstance(item, dict) or set(item) - {"custom_id", "params"}:
            errors.add("invalid_request", f"{where}: an object of custom_id and params", index, where)
            continue
        custom_id, params = item.get("custom_id"), item.get("params")
        if not isinstance(custom_id, str) or not 1 <= len(custom_id) <= 64:
            errors.add("invalid_request", f"{where}.custom_id: 1-64 characters", index, f"{where}.custom_id")
            continue
        if custom_id in seen:
            errors.add(
                "invalid_request",
                f"{where}.custom_id: {custom_id!r} is used more than once",
                index,
                f"{where}.custom_id",
            )
            continue
        seen.add(custom_id)
        if not isinstance(params, dict):
            errors.add("invalid_request", f"{where}.params: an object is required", index, f"{where}.params")
            continue
        lines.append(Line(index, custom_id, params))
    return lines


def provider_for(settings: Settings, endpoint: str, model: str) -> str | None:
    """The first configured provider that serves ``endpoint`` and ``model`` (its catalogue or
    deployments): a line goes wherever its model is served, whatever API the client spoke."""
    for name, provider in settings.providers.items():
        if endpoint in ENDPOINTS[provider.kind] and lanes.serves(settings, name, provider, model):
            return name
    return None


def tags_of(metadata: Mapping[str, str] | None, feature_key: str) -> dict[str, str]:
    """Job tags from batch metadata: every pair a tag may hold (others are left out, since OpenAI
    allows metadata tags do not), and ``feature`` from ``feature_key``."""
    tags: dict[str, str] = {}
    for key, value in (metadata or {}).items():
        if tag_allowed(key, value):
            tags[key] = value
    if feature_key in tags:
        tags["feature"] = tags[feature_key]
    return tags


def jobs_for(
    lines: Iterable[Line],
    batch: ClientBatch,
    settings: Settings,
    errors: LineErrors,
    *,
    now_ms: int,
    param_prefix: str = "body",
) -> list[NewJob]:
    """One NewJob per line through intake's own checks; a line they refuse is an error of the batch."""
    tags = tags_of(batch.metadata, settings.compat.feature_metadata_key)
    deadline_in = (batch.expires_ms - now_ms) / 1000
    jobs: list[NewJob] = []
    for line in lines:
        model = line.body.get("model")
        provider = provider_for(settings, batch.endpoint, model) if isinstance(model, str) else None
        if provider is None:
            errors.add(
                "model_not_found",
                f"The model {model!r} is not served by any configured provider for {batch.endpoint}.",
                line.number,
                f"{param_prefix}.model",
            )
            continue
        raw = {
            "provider": provider,
            "endpoint": batch.endpoint,
            "body": line.body,
            "deadline_in": deadline_in,
        }
        if tags:
            raw["tags"] = tags
        try:
            job = validate(raw, tenant=batch.tenant, now_ms=now_ms, settings=settings)
        except BatchshiftError as exc:
            errors.add("invalid_request", exc.message, line.number, exc.field)
            continue
        job.client_batch, job.custom_id = batch.id, line.custom_id
        jobs.append(job)
    return jobs


def refused_entry(custom_id: str, exc: BatchshiftError) -> str:
    """A line admission refused, as its line entry: ``!`` and the custom_id with the error."""
    return (
        "!"
        + orjson.dumps(
            {"custom_id": custom_id, "error": {"code": exc.error_type, "message": exc.message}}
        ).decode()
    )


async def enqueue_chunk(
    jobs: list[NewJob], ledger: Ledger, gate: AdmissionGate, settings: Settings
) -> tuple[list[str], int]:
    """Admit and enqueue a chunk of lines' jobs: their line entries in order (the job id, or the
    refusal of a line admission or the enqueue step refused), and how many were refused."""
    entries: list[str] = []
    refused = 0
    admitted: list[NewJob] = []
    pending: list[str | NewJob] = []
    for job in jobs:
        try:
            await admit(job, gate)
        except BatchshiftError as exc:
            pending.append(refused_entry(job.custom_id, exc))
            refused += 1
            continue
        admitted.append(job)
        pending.append(job)
    results = await ledger.enqueue_each(admitted)
    failed = next((o for o in results if isinstance(o, ResponseError)), None)
    if failed is not None and not any(
        isinstance(o, EnqueueOutcome) and o.status == "created" for o in results
    ):
        raise failed  # nothing of the chunk was stored: the create fails as a whole, as a request would
    outcomes = iter(results)
    for entry in pending:
        if isinstance(entry, str):
            entries.append(entry)
            continue
        outcome = next(outcomes)
        if isinstance(outcome, ResponseError):
            # Others of the chunk were stored: this line alone is refused (it wrote nothing), so the
            # batch's stored lines are never created twice by a retried create.
            log.warning("client_batch.line_store_failed", job_id=entry.id, error=str(outcome))
            entries.append(refused_entry(entry.custom_id, BatchshiftError(STORE_FAILED)))
            refused += 1
        elif outcome.status == "created":
            entries.append(entry.id)
        else:
            error = refusal(entry, outcome, settings) or BatchshiftError(f"not enqueued: {outcome.status}")
            entries.append(refused_entry(entry.custom_id, error))
            refused += 1
    return entries, refused
