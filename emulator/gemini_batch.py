"""Gemini batch mode in the emulator: answers, errors, the batch operation and its output.

A batch is created by ``POST /v1beta/models/{model}:batchGenerateContent`` from inline requests or
an uploaded JSONL file (``{"key", "request"}`` per line) and read back as a long-running operation
whose ``metadata`` is the GenerateContentBatch (``state`` ``BATCH_STATE_*``, ``batchStats``,
``output``). Lifecycle: ``PENDING`` (no progress yet; a stalled batch stays there) → ``RUNNING`` →
``SUCCEEDED``, or ``FAILED`` at once under the ``invalid_file`` fault (the operation's ``error``
says why), or ``CANCELLED`` after a cancel, or ``EXPIRED``: at the end of its turnaround under
the ``expire`` fault, and in any case once it has been pending or running for 48 hours, as
Gemini does. Cancelled and expired batches have no output at all; a succeeded batch answers every
request, in input order, failed lines (``line_error_rate``) as a ``google.rpc.Status``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from emulator import faults, outputs
from emulator.state import EmulatorState, GeminiBatch, GeminiFile, Lines, new_id

WINDOW_S = 48 * 3600  # a batch pending or running this long expires, without results
BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
OUTPUT_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput"
ENDED = ("BATCH_STATE_SUCCEEDED", "BATCH_STATE_FAILED", "BATCH_STATE_CANCELLED", "BATCH_STATE_EXPIRED")
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_MESSAGES = {
    400: "Request contains an invalid argument.",
    429: "Resource has been exhausted (e.g. check quota).",
    500: "An internal error has occurred.",
    503: "The model is overloaded. Please try again later.",
}


class CreateRefused(ValueError):
    """Raised when a create request is refused as a whole (HTTP 400)."""


def status_object(status: int, message: str | None = None) -> dict[str, Any]:
    """A ``google.rpc.Status``-style error object (what a failed line and an error answer carry)."""
    return {
        "code": status,
        "message": message or _MESSAGES.get(status, "Emulated error."),
        "status": STATUS_NAMES.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION"),
    }


def error_body(status: int, message: str | None = None) -> bytes:
    """Google's error answer: ``{"error": {"code", "message", "status"}}``."""
    return orjson.dumps({"error": status_object(status, message)})


def timestamp(at: float | None) -> str | None:
    """Google's RFC 3339 timestamps (UTC, ``Z``)."""
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


def bare_model(name: str) -> str:
    """``models/gemini-2.5-flash`` → ``gemini-2.5-flash``."""
    return name.removeprefix("models/")


def validate(request: Any) -> str | None:
    """Why a GenerateContentRequest is invalid, or None."""
    if not isinstance(request, dict):
        return "request: must be an object"
    contents = request.get("contents")
    if not isinstance(contents, list) or not contents:
        return "* GenerateContentRequest.contents: contents is not specified"
    for index, content in enumerate(contents):
        if not isinstance(content, dict) or not isinstance(content.get("parts"), list):
            return f"* GenerateContentRequest.contents[{index}].parts: must be a list"
    return None


def _part_texts(content: Any) -> list[str]:
    parts = content.get("parts") if isinstance(content, dict) else None
    return [str(p.get("text", "")) for p in parts or [] if isinstance(p, dict)]


def answer(model: str, request: dict[str, Any]) -> dict[str, Any]:
    """The GenerateContentResponse for a valid request: a pure function of model and request, so
    a batch line and the same request sent to ``generateContent`` get the same answer and usage."""
    body = {key: value for key, value in request.items() if key != "model"}
    seed = outputs.seed_of({"model": model, "request": body})
    prompt = 0
    for content in [request.get("systemInstruction"), *request["contents"]]:
        if content is not None:
            prompt += outputs.PER_MESSAGE_TOKENS + sum(outputs.tokens(t) for t in _part_texts(content))
    config = request.get("generationConfig") or {}
    max_tokens = config.get("maxOutputTokens") if isinstance(config, dict) else None
    text, output, cut = outputs.reply(seed, max_tokens if isinstance(max_tokens, int) else None)
    return {
        "candidates": [
            {
                "content": {"parts": [{"text": text}], "role": "model"},
                "finishReason": "MAX_TOKENS" if cut else "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": prompt,
            "candidatesTokenCount": output,
            "totalTokenCount": prompt + output,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
        },
        "modelVersion": model,
        "responseId": f"{seed:016x}",
    }


def _entries(body: Any, state: EmulatorState) -> tuple[list[str], list[Any], str | None]:
    """(keys, requests, input file name) of a create request's ``batch.inputConfig``."""
    batch = body.get("batch") if isinstance(body, dict) else None
    config = batch.get("inputConfig") if isinstance(batch, dict) else None
    if not isinstance(config, dict):
        raise CreateRefused("batch.input_config: is required")
    if "fileName" in config:
        found = state.gemini_files.get(str(config["fileName"]))
        if found is None:
            raise CreateRefused(f"File {config['fileName']} does not exist.")
        keys, requests = [], []
        for number, raw in enumerate(found.content.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise CreateRefused(f"Invalid JSON on line {number} of {found.name}.") from exc
            if not isinstance(line, dict) or "request" not in line:
                raise CreateRefused(f"Line {number} of {found.name} has no request.")
            keys.append(str(line.get("key", number - 1)))
            requests.append(line["request"])
        return keys, requests, found.name
    inline = config.get("requests")
    items = inline.get("requests") if isinstance(inline, dict) else None
    if not isinstance(items, list):
        raise CreateRefused("batch.input_config: one of requests or file_name is required")
    keys = []
    for index, item in enumerate(items):
        metadata = item.get("metadata") if isinstance(item, dict) else None
        keys.append(str(metadata.get("key", index)) if isinstance(metadata, dict) else str(index))
    return keys, [item.get("request") if isinstance(item, dict) else None for item in items], None


def create(state: EmulatorState, model: str, body: Any, now: float) -> GeminiBatch:
    """A new batch from a create request's body, or CreateRefused naming the problem."""
    keys, requests, input_file = _entries(body, state)
    if not requests:
        raise CreateRefused("batch.input_config: the batch holds no requests")
    if len(set(keys)) != len(keys):
        raise CreateRefused("batch.input_config: request keys must be unique")
    rate = faults.per_model(state.config["line_error_rate"], model)
    batch_id = new_id("")
    lines = Lines(keys, [validate(r) for r in requests], [faults.line_fails(k, rate) for k in keys])
    lines.arrange(batch_id)
    batch = GeminiBatch(
        id=batch_id,
        model=model,
        display_name=str(body["batch"].get("displayName") or ""),
        run=state.new_run(model, now, validating=False),
        created_at=now,
        keys=keys,
        requests=[orjson.dumps(r) for r in requests],
        lines=lines,
        line_error_status=int(state.config["line_error_status"]),
        input_file=input_file,
        invalid=faults.model_listed(state.config["invalid_file"], model),
    )
    state.gemini_batches[batch_id] = batch
    return batch


def status(batch: GeminiBatch, now: float) -> tuple[str, int, float | None]:
    """(``BATCH_STATE_*``, requests done, end time) at wall time ``now``."""
    run, total = batch.run, len(batch.requests)
    if batch.invalid:
        return "BATCH_STATE_FAILED", 0, batch.created_at
    if run.cancel_elapsed is not None:
        if run.cancel_done(now):
            return "BATCH_STATE_CANCELLED", 0, run.cancel_at + run.cancel_s  # type: ignore[operator]
        return "BATCH_STATE_RUNNING", run.processed(run.cancel_elapsed, total), None
    elapsed = run.elapsed(now)
    if elapsed < run.turnaround:
        if now >= batch.created_at + WINDOW_S:
            return "BATCH_STATE_EXPIRED", 0, batch.created_at + WINDOW_S
        return (
            ("BATCH_STATE_PENDING" if elapsed <= 0 else "BATCH_STATE_RUNNING"),
            run.processed(elapsed, total),
            None,
        )
    ended_at = run.wall(run.turnaround)
    if ended_at >= batch.created_at + WINDOW_S:
        return "BATCH_STATE_EXPIRED", 0, batch.created_at + WINDOW_S
    if run.expire_fraction is not None:
        return "BATCH_STATE_EXPIRED", 0, ended_at
    return "BATCH_STATE_SUCCEEDED", total, ended_at


def build_output(state: EmulatorState, batch: GeminiBatch, now: float) -> None:
    """A succeeded batch's answers, built once, in input order: a responses file for file input,
    inlined responses for inline input."""
    if batch.final_counts is not None:
        return
    succeeded = failed = 0
    entries: list[dict[str, Any]] = []
    for index, key in enumerate(batch.keys):
        problem, fails = batch.lines.invalid[index], batch.lines.fails[index]
        entry: dict[str, Any]
        if problem is not None or fails:
            status_code = 400 if problem is not None else batch.line_error_status
            entry = {"error": status_object(status_code, problem)}
            failed += 1
        else:
            entry = {"response": answer(batch.model, orjson.loads(batch.requests[index]))}
            succeeded += 1
        entries.append((entry | {"key": key}) if batch.input_file else (entry | {"metadata": {"key": key}}))
    if batch.input_file is None:
        batch.inlined = entries
    else:
        name = f"files/batch-{batch.id}"
        content = b"".join(orjson.dumps(e) + b"\n" for e in entries)
        state.gemini_files[name] = GeminiFile(name, name, "application/jsonl", content, now, "GENERATED")
        batch.responses_file = name
    batch.final_counts = (succeeded, failed)


def view(state: EmulatorState, batch: GeminiBatch, now: float) -> dict[str, Any]:
    """The batch as Gemini answers it: a long-running operation with the batch as its metadata."""
    current, done, ended_at = status(batch, now)
    total = len(batch.requests)
    succeeded, failed = batch.lines.counts(done) if done < total else (done, 0)
    output: dict[str, Any] | None = None
    if current == "BATCH_STATE_SUCCEEDED":
        build_output(state, batch, now)
        assert batch.final_counts is not None
        succeeded, failed = batch.final_counts
        if batch.responses_file is not None:
            output = {"responsesFile": batch.responses_file}
        else:
            output = {"inlinedResponses": {"inlinedResponses": batch.inlined}}
    elif current in ENDED:
        succeeded = failed = 0
    pending = total - succeeded - failed if current not in ENDED else 0
    name = f"batches/{batch.id}"
    metadata: dict[str, Any] = {
        "@type": BATCH_TYPE,
        "name": name,
        "model": f"models/{batch.model}",
        "displayName": batch.display_name,
        "createTime": timestamp(batch.created_at),
        "updateTime": timestamp(ended_at if ended_at is not None else now),
        "batchStats": {
            "requestCount": str(total),
            "successfulRequestCount": str(succeeded),
            "failedRequestCount": str(failed),
            "pendingRequestCount": str(pending),
        },
        "state": current,
    }
    if batch.input_file is not None:
        metadata["inputConfig"] = {"fileName": batch.input_file}
    if ended_at is not None:
        metadata["endTime"] = timestamp(ended_at)
    operation: dict[str, Any] = {"name": name, "metadata": metadata}
    if current == "BATCH_STATE_FAILED":
        operation["error"] = status_object(400, "The batch input could not be processed.")
    if current in ENDED:
        operation["done"] = True
    if output is not None:
        metadata["output"] = output
        operation["response"] = {"@type": OUTPUT_TYPE, **output}
    return operation


def file_view(obj: GeminiFile, base_url: str) -> dict[str, Any]:
    """A File resource as the Files API shows it."""
    short = obj.name.removeprefix("files/")
    view: dict[str, Any] = {
        "name": obj.name,
        "displayName": obj.display_name,
        "mimeType": obj.mime_type,
        "sizeBytes": str(len(obj.content)),
        "createTime": timestamp(obj.created_at),
        "updateTime": timestamp(obj.created_at),
        "expirationTime": timestamp(obj.created_at + WINDOW_S),
        "uri": f"{base_url}/v1beta/files/{short}",
        "state": "ACTIVE",
        "source": obj.source,
    }
    if obj.source == "GENERATED":
        view["downloadUri"] = f"{base_url}/download/v1beta/files/{short}:download?alt=media"
    return view
