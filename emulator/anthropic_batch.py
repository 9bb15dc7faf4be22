"""Anthropic Message Batches in the emulator: create-time checks, the MessageBatch object, results.

Lifecycle: ``in_progress`` → ``ended``, or ``in_progress`` → ``canceling`` → ``ended``.
``request_counts`` show every request as ``processing`` until the batch ends. Bad ``params`` are
not refused at create time: they come back as ``errored`` results, as Anthropic does. Unfinished
requests end ``canceled`` (after a cancel) or ``expired`` (``expire`` fault).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import orjson

from emulator import faults, outputs
from emulator.state import AnthropicBatch, EmulatorState, Lines, new_id

MAX_REQUESTS = 100_000
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_ERROR_MESSAGES = {
    400: "Emulated invalid request.",
    429: "Emulated rate limit.",
    500: "Emulated internal server error.",
    529: "Emulated overload.",
}


class CreateRefused(ValueError):
    """Raised when a create request is refused as a whole (HTTP 400)."""


def rfc3339(at: float | None) -> str | None:
    """Anthropic's timestamp format."""
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


def create(state: EmulatorState, body: Any, now: float, account: str = "") -> AnthropicBatch:
    """A new batch from a create request's body, or CreateRefused naming the problem."""
    requests = body.get("requests") if isinstance(body, dict) else None
    if not isinstance(requests, list) or not requests:
        raise CreateRefused("requests: Field required (a list of at least one request)")
    if len(requests) > MAX_REQUESTS:
        raise CreateRefused(f"requests: at most {MAX_REQUESTS} requests per batch")
    ids: list[str] = []
    seen: set[str] = set()
    params_raw: list[bytes] = []
    invalid: list[str | None] = []
    for index, request in enumerate(requests):
        custom_id = request.get("custom_id") if isinstance(request, dict) else None
        if not isinstance(custom_id, str) or not CUSTOM_ID.match(custom_id):
            raise CreateRefused(
                f"requests.{index}.custom_id: String should match pattern '{CUSTOM_ID.pattern}'"
            )
        if custom_id in seen:
            raise CreateRefused(f"requests.{index}.custom_id: duplicate custom_id {custom_id!r}")
        if "params" not in request:
            raise CreateRefused(f"requests.{index}.params: Field required")
        seen.add(custom_id)
        ids.append(custom_id)
        params_raw.append(orjson.dumps(request["params"]))
        invalid.append(outputs.validate_anthropic(request["params"]))
    first = requests[0]["params"]
    model = str(first.get("model") or "") if isinstance(first, dict) else ""
    rate = faults.per_model(state.config["line_error_rate"], model)
    batch_id = new_id("msgbatch_")
    lines = Lines(ids, invalid, [faults.line_fails(cid, rate) for cid in ids])
    lines.arrange(batch_id)
    batch = AnthropicBatch(
        id=batch_id,
        model=model,
        run=state.new_run(model, now, validating=False),
        created_at=now,
        requests=params_raw,
        lines=lines,
        line_error_status=int(state.config["line_error_status"]),
        account=account,
    )
    state.anthropic_batches[batch.id] = batch
    return batch


def status(batch: AnthropicBatch, now: float) -> tuple[str, int]:
    """``processing_status`` and how many requests are done, at wall time ``now``."""
    run, total = batch.run, len(batch.requests)
    if run.cancel_elapsed is not None:
        return ("ended" if run.cancel_done(now) else "canceling"), run.processed(run.cancel_elapsed, total)
    elapsed = run.elapsed(now)
    if elapsed < run.turnaround:
        return "in_progress", run.processed(elapsed, total)
    return "ended", run.processed(run.turnaround, total)


def view(state: EmulatorState, batch: AnthropicBatch, now: float, base_url: str) -> dict[str, Any]:
    """The MessageBatch object as Anthropic would return it now."""
    current, done = status(batch, now)
    run = batch.run
    ended_at = None
    if current == "ended":
        build_results(state, batch, done)
        ended_at = run.cancel_at + run.cancel_s if run.cancel_at is not None else run.wall(run.turnaround)
    counts = batch.final_counts or {
        "processing": len(batch.requests),
        "succeeded": 0,
        "errored": 0,
        "canceled": 0,
        "expired": 0,
    }
    return {
        "id": batch.id,
        "type": "message_batch",
        "processing_status": current,
        "request_counts": counts,
        "ended_at": rfc3339(ended_at),
        "created_at": rfc3339(batch.created_at),
        "expires_at": rfc3339(batch.created_at + 86_400),
        "cancel_initiated_at": rfc3339(run.cancel_at),
        "archived_at": None,
        "results_url": f"{base_url}/v1/messages/batches/{batch.id}/results" if current == "ended" else None,
    }


def build_results(state: EmulatorState, batch: AnthropicBatch, done: int) -> None:
    """The results JSONL of an ended batch, built once, in work (shuffled) order."""
    if batch.results is not None:
        return
    unfinished = "canceled" if batch.run.cancel_at is not None else "expired"
    counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    out = bytearray()
    lines = batch.lines
    for position, index in enumerate(lines.order):
        custom_id = lines.custom_ids[index]
        result: dict[str, Any]
        if position >= done:
            result = {"type": unfinished}
        elif lines.invalid[index] is not None or lines.fails[index]:
            status_code = 400 if lines.invalid[index] is not None else batch.line_error_status
            message = lines.invalid[index] or _ERROR_MESSAGES.get(status_code, "Emulated error.")
            request_id = f"req_{outputs.seed_of({'batch': batch.id, 'custom_id': custom_id}):016x}"
            result = {
                "type": "errored",
                "error": outputs.anthropic_error_object(status_code, message, request_id),
            }
        else:
            params = orjson.loads(batch.requests[index])
            cache = state.cache.at(_line_end(batch, position), batch.account)
            result = {"type": "succeeded", "message": outputs.anthropic_answer(params, cache, "batch")}
        counts[result["type"]] += 1
        out += orjson.dumps({"custom_id": custom_id, "result": result}) + b"\n"
    batch.results = bytes(out)
    batch.final_counts = counts


def _line_end(batch: AnthropicBatch, position: int) -> float:
    """Wall time the ``position``-th request of the work order was done: the cache's time for it."""
    run = batch.run
    share = (position + 1) / max(len(batch.lines.order), 1)
    return run.wall(run.work_start + (run.work_end - run.work_start) * share)
