"""OpenAI batches in the emulator: input validation, the Batch object at a given time, results files.

Lifecycle: ``validating`` → ``in_progress`` (live ``request_counts``) → ``finalizing`` →
``completed``; ``failed`` when the input file is invalid (``errors.data``); ``expired`` with the
done share in the output file and ``batch_expired`` lines in the error file (``expire`` fault);
``cancelling`` → ``cancelled`` with the done share kept and ``batch_cancelled`` lines for the rest.
``request_counts.failed`` counts the lines in the error file.
"""

from __future__ import annotations

from typing import Any

import orjson

from emulator import faults, outputs
from emulator.prompt_cache import BatchWindow
from emulator.state import (
    MAX_VALIDATION_ERRORS,
    OPENAI_MAX_REQUESTS,
    EmulatorState,
    Lines,
    OpenAIBatch,
)

ENDED = ("completed", "failed", "expired", "cancelled")

# How a line made to fail by the line_error_rate fault looks, by its status.
_LINE_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", "invalid_value", "Emulated invalid request."),
    429: ("requests", "rate_limit_exceeded", "Emulated rate limit."),
    500: ("server_error", None, "Emulated server error."),
    503: ("server_error", "overloaded", "Emulated overload."),
}


def api_endpoint(endpoint: str) -> str:
    """The endpoint as OpenAI's paths name it: Azure's batches say ``/chat/completions``."""
    return endpoint if endpoint.startswith("/v1/") else "/v1" + endpoint


def token_limit_error(model: str) -> dict[str, Any]:
    """The batch error of a create refused because the enqueued-token quota is full."""
    return {
        "code": "token_limit_exceeded",
        "message": f"The number of enqueued tokens has surpassed the configured limit for {model!r}. "
        "Please try again once the current jobs have finished.",
        "param": None,
        "line": None,
    }


def validate(state: EmulatorState, batch: OpenAIBatch) -> None:
    """Read the input file once: batch-level errors, or the lines in their work order."""
    if batch.lines is not None or batch.errors:
        return
    input_lines = state.input_of(batch).content.splitlines()
    errors: list[dict[str, Any]] = []

    def problem(code: str, message: str, line: int | None = None, param: str | None = None) -> None:
        if len(errors) < MAX_VALIDATION_ERRORS:
            errors.append({"code": code, "message": message, "param": param, "line": line})

    ids: list[str] = []
    seen: set[str] = set()
    invalid: list[str | None] = []
    models: set[str] = set()
    for number, raw in enumerate(input_lines, start=1):
        if not raw.strip():
            continue
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            problem("invalid_json_line", "This line is not parseable as valid JSON.", number)
            continue
        if not isinstance(line, dict):
            problem("invalid_json_line", "Each line must be a JSON object.", number)
            continue
        custom_id = line.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            problem(
                "missing_required_parameter", "Missing required parameter: 'custom_id'.", number, "custom_id"
            )
            continue
        if custom_id in seen:
            problem("duplicate_custom_id", f"The custom_id {custom_id!r} is used more than once.", number)
        seen.add(custom_id)
        if line.get("method") != "POST":
            problem("invalid_method", "Only the POST method is supported.", number, "method")
        if line.get("url") != batch.endpoint:
            problem(
                "url_mismatch", "The URL provided for this request does not match the batch endpoint.", number
            )
        body = line.get("body")
        if isinstance(body, dict) and isinstance(body.get("model"), str):
            models.add(body["model"])
        ids.append(custom_id)
        invalid.append(outputs.validate_openai(api_endpoint(batch.endpoint), body))
    if not ids and not errors:
        problem("empty_file", "The input file is empty.")
    if len(ids) > OPENAI_MAX_REQUESTS:
        problem("too_many_requests", f"A batch may hold at most {OPENAI_MAX_REQUESTS} requests.")
    if len(models) > 1:
        problem("model_mismatch", "Every request in a batch must use the same model.", param="model")
    if batch.invalid_file:
        problem("invalid_file", "Emulated fault: the input file was rejected.")
    if errors:
        batch.errors = errors
        return
    fails = [faults.line_fails(cid, batch.line_error_rate) for cid in ids]
    batch.lines = Lines(ids, invalid, fails)
    batch.lines.arrange(batch.id)


def status(state: EmulatorState, batch: OpenAIBatch, now: float) -> tuple[str, int]:
    """The batch's status and how many requests are done, at wall time ``now``."""
    run = batch.run
    if run.cancel_elapsed is not None:
        validate(state, batch)
        total = len(batch.lines.custom_ids) if batch.lines else 0
        done = run.processed(run.cancel_elapsed, total)
        return ("cancelled" if run.cancel_done(now) else "cancelling"), done
    elapsed = run.elapsed(now)
    if elapsed < run.work_start:
        return "validating", 0
    validate(state, batch)
    if batch.lines is None:
        return "failed", 0
    total = len(batch.lines.custom_ids)
    if elapsed < run.work_end:
        return "in_progress", run.processed(elapsed, total)
    if run.expire_fraction is not None:
        return "expired", run.processed(run.work_end, total)
    return ("finalizing" if elapsed < run.turnaround else "completed"), total


def view(state: EmulatorState, batch: OpenAIBatch, now: float) -> dict[str, Any]:
    """The Batch object as OpenAI would return it now (absent rather than null optional fields)."""
    current, done = status(state, batch, now)
    if current in ENDED:
        build_results(state, batch, done, current)
    run = batch.run
    elapsed = run.elapsed(now)
    obj: dict[str, Any] = {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "model": batch.model,
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "status": current,
        "created_at": batch.created_at,
        "expires_at": batch.created_at + 86_400,
        "metadata": batch.metadata,
    }
    total = len(batch.lines.custom_ids) if batch.lines else 0
    if batch.final_counts is not None:
        completed, failed = batch.final_counts
    elif batch.lines is not None:
        completed, failed = batch.lines.counts(done)
    else:
        completed = failed = 0
    obj["request_counts"] = {"total": total, "completed": completed, "failed": failed}
    if batch.errors:
        obj["errors"] = {"object": "list", "data": batch.errors}
    stamps = {
        "in_progress_at": run.work_start if batch.lines is not None else None,
        "failed_at": run.work_start if current == "failed" else None,
        "finalizing_at": run.work_end if current in ("finalizing", "completed") else None,
        "completed_at": run.turnaround if current == "completed" else None,
        "expired_at": run.turnaround if current == "expired" else None,
    }
    for name, at in stamps.items():
        if at is not None and (elapsed >= at or name == "failed_at"):
            obj[name] = int(run.wall(at))
    if run.cancel_at is not None:
        obj["cancelling_at"] = int(run.cancel_at)
        if current == "cancelled":
            obj["cancelled_at"] = int(run.cancel_at + run.cancel_s)
    for name in ("output_file_id", "error_file_id"):
        if getattr(batch, name) is not None:
            obj[name] = getattr(batch, name)
        elif batch.azure:
            obj[name] = ""
    if batch.usage is not None:
        obj["usage"] = {
            "input_tokens": batch.usage.get("input_tokens", 0),
            "input_tokens_details": {"cached_tokens": batch.usage.get("cached_tokens", 0)},
            "output_tokens": batch.usage.get("output_tokens", 0),
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": batch.usage.get("input_tokens", 0) + batch.usage.get("output_tokens", 0),
        }
    return obj


def build_results(state: EmulatorState, batch: OpenAIBatch, done: int, final: str) -> None:
    """Write the output and error files of an ended batch, once."""
    if batch.final_counts is not None:
        return
    if batch.lines is None:  # failed validation: nothing ran
        batch.final_counts = (0, 0)
        return
    lines = batch.lines
    raw_lines = [raw for raw in state.input_of(batch).content.splitlines() if raw.strip()]
    output, errors = bytearray(), bytearray()
    totals: dict[str, int] = {}
    completed = failed = 0
    answers = _answers(state, batch, raw_lines, set(lines.order[:done]))
    for position, index in enumerate(lines.order):
        custom_id = lines.custom_ids[index]
        line_id = outputs.seed_of({"batch": batch.id, "custom_id": custom_id})
        record: dict[str, Any] = {"id": f"batch_req_{line_id:016x}", "custom_id": custom_id}
        if position >= done:
            code = "batch_expired" if final == "expired" else "batch_cancelled"
            message = (
                "This request could not be executed before the completion window expired."
                if final == "expired"
                else "This request was not executed because the batch was cancelled."
            )
            record.update(response=None, error={"code": code, "message": message})
            errors += orjson.dumps(record) + b"\n"
            failed += 1
            continue
        request_id = f"req_{line_id:016x}"
        reason = lines.invalid[index]
        if reason is not None or lines.fails[index]:
            status_code = 400 if reason is not None else batch.line_error_status
            err_type, code_, message = _LINE_ERRORS.get(
                status_code, ("server_error", None, "Emulated error.")
            )
            body = {"error": {"message": reason or message, "type": err_type, "param": None, "code": code_}}
            record.update(
                response={"status_code": status_code, "request_id": request_id, "body": body}, error=None
            )
            errors += orjson.dumps(record) + b"\n"
            failed += 1
            continue
        answer = answers[index]
        outputs.openai_usage_totals(totals, answer)
        record.update(response={"status_code": 200, "request_id": request_id, "body": answer}, error=None)
        output += orjson.dumps(record) + b"\n"
        completed += 1
    if output:
        batch.output_file_id = state.add_file(f"{batch.id}_output.jsonl", "batch_output", [bytes(output)]).id
    if errors:
        batch.error_file_id = state.add_file(f"{batch.id}_error.jsonl", "batch_output", [bytes(errors)]).id
    batch.usage = totals
    batch.final_counts = (completed, failed)


def _answers(
    state: EmulatorState, batch: OpenAIBatch, raw_lines: list[bytes], done: set[int]
) -> dict[int, dict[str, Any]]:
    """The answers of the lines that ran, by line index, worked out in the input's order: the
    prompt cache judges a line by the lines just before it in the file (:mod:`emulator.prompt_cache`)."""
    assert batch.lines is not None
    window = BatchWindow(int(state.config["cache_window"]))
    endpoint = api_endpoint(batch.endpoint)
    answers: dict[int, dict[str, Any]] = {}
    for index in range(len(raw_lines)):
        if index not in done or batch.lines.invalid[index] is not None or batch.lines.fails[index]:
            continue
        request = orjson.loads(raw_lines[index])["body"]
        answers[index] = outputs.openai_answer(endpoint, request, window, "default")
    return answers
