"""The emulator's in-memory state, and batch progress computed from time.

No background task moves a batch along: its status is a pure function of its creation time, its
turnaround, its stalls and its cancellation, evaluated when asked (:class:`Run`). Work is done in
a fixed order, the batch id's shuffle of the input, so a rerun with the same id reproduces it,
and results come back in that (shuffled) order. Results are built once, the first time a batch
is seen ended, and kept as files (OpenAI) or a JSONL blob (Anthropic).
"""

from __future__ import annotations

import itertools
import math
import random
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson

from emulator import faults
from emulator.prompt_cache import TimedCache

OPENAI_MAX_REQUESTS = 50_000
VALIDATING_SHARE = 0.1  # of the turnaround spent validating (OpenAI)
FINALIZING_SHARE = 0.1  # of the turnaround spent finalizing (OpenAI, completing batches only)
REQUEST_LOG_SIZE = 10_000
MAX_VALIDATION_ERRORS = 10


def new_id(prefix: str) -> str:
    """A fresh object id in the provider's style."""
    return prefix + secrets.token_hex(12)


@dataclass
class Run:
    """Where a batch stands at any time: elapsed progress time, stalls and cancellation."""

    created: float
    turnaround: float
    validating: bool  # OpenAI validates first; Anthropic starts at once
    expire_fraction: float | None  # expire at the end with this share done, or complete normally
    cancel_s: float
    stalled_since: float | None = None
    shift: float = 0.0  # stalled time lifted so far; the clock runs late by this much
    cancel_at: float | None = None
    cancel_elapsed: float | None = None

    def elapsed(self, now: float) -> float:
        """Progress seconds at wall time ``now``: a stall stops the clock."""
        end = now if self.stalled_since is None else min(now, self.stalled_since)
        return max(0.0, end - self.created - self.shift)

    def stall(self, now: float) -> None:
        if self.stalled_since is None:
            self.stalled_since = now

    def resume(self, now: float) -> None:
        if self.stalled_since is not None:
            self.shift += now - self.stalled_since
            self.stalled_since = None

    @property
    def work_start(self) -> float:
        return VALIDATING_SHARE * self.turnaround if self.validating else 0.0

    @property
    def work_end(self) -> float:
        if self.validating and self.expire_fraction is None:
            return (1 - FINALIZING_SHARE) * self.turnaround
        return self.turnaround

    def processed(self, elapsed: float, total: int) -> int:
        """How many requests are done after ``elapsed`` progress seconds."""
        target = total if self.expire_fraction is None else math.floor(total * self.expire_fraction)
        span = self.work_end - self.work_start
        share = 1.0 if span <= 0 else min(1.0, max(0.0, (elapsed - self.work_start) / span))
        return math.floor(target * share)

    def wall(self, elapsed: float) -> float:
        """Wall time at which the clock showed ``elapsed`` (stalls before it included)."""
        return self.created + self.shift + elapsed

    def cancel(self, now: float) -> None:
        self.cancel_at = now
        self.cancel_elapsed = self.elapsed(now)

    def cancel_done(self, now: float) -> bool:
        return self.cancel_at is not None and now >= self.cancel_at + self.cancel_s


@dataclass
class FileObject:
    """An OpenAI file: uploaded batch input, or a batch's output or error file."""

    id: str
    filename: str
    purpose: str
    pieces: list[bytes]  # the content as received (see multipart); joined on the first whole read
    created_at: int

    @property
    def size(self) -> int:
        return sum(len(piece) for piece in self.pieces)

    @property
    def content(self) -> bytes:
        if len(self.pieces) != 1:
            self.pieces = [b"".join(self.pieces)]
        return self.pieces[0]

    def first_line(self) -> bytes:
        """The content up to its first line end, without joining the rest."""
        head: list[bytes] = []
        for piece in self.pieces:
            end = piece.find(b"\n")
            if end >= 0:
                head.append(piece[:end])
                break
            head.append(piece)
        return b"".join(head)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.size,
            "created_at": self.created_at,
            "expires_at": self.created_at + 30 * 86400,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
        }


@dataclass
class Lines:
    """A batch's requests once validated: ids, per-line problems, and the order work is done in."""

    custom_ids: list[str]
    invalid: list[str | None]  # why a line's body is invalid (it errors when processed)
    fails: list[bool]  # lines made to fail by the line_error_rate fault
    order: list[int] = field(default_factory=list)
    failed_prefix: list[int] = field(default_factory=list)  # failures among the first j in order

    def arrange(self, seed: str) -> None:
        self.order = list(range(len(self.custom_ids)))
        random.Random(seed).shuffle(self.order)
        flags = (self.invalid[i] is not None or self.fails[i] for i in self.order)
        self.failed_prefix = [0, *itertools.accumulate(int(f) for f in flags)]

    def counts(self, processed: int) -> tuple[int, int]:
        """(succeeded, failed) among the first ``processed`` lines of the work order."""
        failed = self.failed_prefix[processed]
        return processed - failed, failed


@dataclass
class OpenAIBatch:
    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    metadata: dict[str, str] | None
    model: str
    run: Run
    created_at: int
    invalid_file: bool
    line_error_rate: float
    line_error_status: int
    azure: bool = False  # created through Azure's routes: file ids it lacks read "" (as Azure's do)
    lines: Lines | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    output_file_id: str | None = None
    error_file_id: str | None = None
    usage: dict[str, int] | None = None
    final_counts: tuple[int, int] | None = None  # (completed, failed) once results exist


@dataclass
class AnthropicBatch:
    id: str
    model: str
    run: Run
    created_at: float
    requests: list[bytes]  # each request's params, JSON
    lines: Lines
    line_error_status: int
    results: bytes | None = None
    final_counts: dict[str, int] | None = None
    account: str = ""  # the creating call's API key: whose prompt cache its requests use


@dataclass
class GeminiFile:
    """A Gemini Files API object: an uploaded batch input, or a batch's generated responses file."""

    name: str  # "files/…"
    display_name: str
    mime_type: str
    content: bytes
    created_at: float
    source: str  # "UPLOADED" or "GENERATED"


@dataclass
class GeminiUpload:
    """A resumable upload session: what the start call announced, and the bytes received so far."""

    file: GeminiFile
    size: int
    received: bytearray = field(default_factory=bytearray)


@dataclass
class GeminiBatch:
    id: str  # without the "batches/" prefix
    model: str  # without the "models/" prefix
    display_name: str
    run: Run
    created_at: float
    keys: list[str]
    requests: list[bytes]  # each GenerateContentRequest, JSON
    lines: Lines
    line_error_status: int
    input_file: str | None  # "files/…" when the input was a file, None when inline
    invalid: bool = False  # the invalid_file fault: the batch fails as a whole
    final_counts: tuple[int, int] | None = None  # (succeeded, failed) once the output exists
    responses_file: str | None = None
    inlined: list[dict[str, Any]] | None = None


class EmulatorState:
    """Everything the emulator remembers; ``reset`` forgets it all."""

    def __init__(self, config: dict[str, Any] | None, api_key: str | None) -> None:
        self.initial_config = faults.initial(config)
        self.api_key = api_key
        self.reset()

    def reset(self) -> None:
        self.config: dict[str, Any] = faults.merged(self.initial_config, {})
        self.rng = random.Random(self.config["seed"])
        self.files: dict[str, FileObject] = {}
        # Input files deleted while their batch had not yet read them (OpenAI keeps running a
        # batch whose input file was deleted); only the batch reads them.
        self.detached_inputs: dict[str, FileObject] = {}
        self.openai_batches: dict[str, OpenAIBatch] = {}
        self.anthropic_batches: dict[str, AnthropicBatch] = {}
        self.gemini_batches: dict[str, GeminiBatch] = {}
        self.gemini_files: dict[str, GeminiFile] = {}
        self.gemini_uploads: dict[str, GeminiUpload] = {}
        self.cache = TimedCache()
        self.requests: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_SIZE)
        # The emulator's clock: None follows the wall clock; a number (epoch seconds, set through
        # ``POST /_emulator/clock``) holds it there, so a test steps it along with its own clock.
        self.fixed_now: float | None = None

    def now(self) -> float:
        """The time batch progress is computed at: the wall clock, or the time a test set."""
        return time.time() if self.fixed_now is None else self.fixed_now

    def configure(self, patch: dict[str, Any], now: float | None = None) -> dict[str, Any]:
        """Merge settings; a model leaving or joining ``stall`` resumes or stops its batches' clocks."""
        now = self.now() if now is None else now
        new = faults.merged(self.config, patch)
        if "seed" in patch:
            self.rng = random.Random(new["seed"])
        runs = [(b.model, b.run) for b in self.openai_batches.values()]
        runs += [(b.model, b.run) for b in self.anthropic_batches.values()]
        runs += [(b.model, b.run) for b in self.gemini_batches.values()]
        for model, run in runs:
            if not faults.model_listed(new["stall"], model):
                run.resume(now)
            elif run.elapsed(now) < run.turnaround and run.cancel_at is None:
                run.stall(now)
        self.config = new
        return self.config

    def new_run(self, model: str, now: float, *, validating: bool) -> Run:
        """A batch's clock, with the settings at its submission fixed for its life (stalls stay live)."""
        expire = self.config["expire"]
        expire_fraction = None
        if model in expire or "*" in expire:
            expire_fraction = min(1.0, faults.per_model(expire, model))
        run = Run(
            created=now,
            turnaround=faults.per_model(self.config["turnaround_s"], model, faults.DEFAULTS["turnaround_s"]),
            validating=validating,
            expire_fraction=expire_fraction,
            cancel_s=float(self.config["cancel_s"]),
        )
        if faults.model_listed(self.config["stall"], model):
            run.stall(now)
        return run

    def input_of(self, batch: OpenAIBatch) -> FileObject:
        """A batch's input file, deleted or not."""
        found = self.files.get(batch.input_file_id) or self.detached_inputs.get(batch.input_file_id)
        assert found is not None, "an input file is kept while its batch needs it"
        return found

    def delete_file(self, file_id: str) -> bool:
        """Forget a file; False when there is none. A batch that still needs it keeps its content."""
        obj = self.files.pop(file_id, None)
        if obj is None:
            return False
        if any(b.input_file_id == file_id and b.final_counts is None for b in self.openai_batches.values()):
            self.detached_inputs[file_id] = obj
        return True

    def add_file(self, filename: str, purpose: str, pieces: list[bytes]) -> FileObject:
        obj = FileObject(new_id("file-"), filename, purpose, pieces, int(self.now()))
        self.files[obj.id] = obj
        return obj


def first_line_model(first_line: bytes) -> str:
    """The model named by a batch input file's first line ("" when unreadable)."""
    try:
        body = orjson.loads(first_line).get("body") or {}
        return str(body.get("model") or "")
    except (orjson.JSONDecodeError, AttributeError):
        return ""
