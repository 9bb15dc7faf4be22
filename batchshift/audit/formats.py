"""Tells a log's format by its content, never by its name, and reads it with the matching reader.

The first bytes decide: OTLP JSON carries ``resourceSpans``; a LiteLLM JSON export is a list (or
``{"data": [...]}``) of rows with ``spend``, ``startTime`` and ``model`` (read from the first
rows: the whole file is parsed once, by the reader); a CSV whose header names
those columns is a LiteLLM CSV export; a first line that is one JSON object with ``timestamp``,
``model`` and ``usage`` is the audit's JSONL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import orjson

from batchshift.audit import jsonl, litellm, otlp
from batchshift.audit.calls import Call
from batchshift.audit.errors import UnreadableLog

Format = Literal["otlp", "litellm-json", "litellm-csv", "jsonl"]
SNIFF_BYTES = 64 * 1024  # enough for the first JSONL line or CSV header of any sane log


def detect(path: Path) -> Format:
    """The format of ``path`` from its content; UnreadableLog when it is none the audit reads."""
    try:
        with path.open("rb") as handle:
            head = handle.read(SNIFF_BYTES)
    except OSError as exc:
        raise UnreadableLog(f"cannot read {path}: {exc.strerror}") from None
    text = head.decode("utf-8-sig", errors="replace").lstrip()
    if not text:
        raise UnreadableLog(f"{path.name}: the file is empty")
    first_line = text.split("\n", 1)[0].strip()
    if '"resourceSpans"' in text[:4096]:
        return "otlp"
    if text.startswith("{") and _is_jsonl_record(first_line):
        return "jsonl"
    if text.startswith(("[", "{")):
        if all(f'"{column}"' in text for column in litellm.SIGNATURE):  # the first rows' keys
            return "litellm-json"
    elif litellm.is_csv_header(first_line):
        return "litellm-csv"
    if missing := _jsonl_keys_missing(first_line):  # most likely a hand-written JSONL line
        raise UnreadableLog(
            f"{path.name}: line 1 is a JSON object without {', '.join(missing)}, which each line of "
            "the audit's JSONL needs (nor is the file OTLP JSON or a LiteLLM spend log)"
        )
    raise UnreadableLog(
        f"{path.name}: not a format the audit reads (OTLP JSON, LiteLLM spend logs as JSON or CSV, "
        "or the audit's JSONL)"
    )


def _jsonl_keys_missing(line: str) -> list[str]:
    """The audit JSONL's required keys a JSON-object line lacks; none for anything else."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return []
    return sorted(jsonl.SIGNATURE - record.keys()) if isinstance(record, dict) else []


def _is_jsonl_record(line: str) -> bool:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return isinstance(record, dict) and jsonl.SIGNATURE <= record.keys()


def read(path: Path, fmt: Format) -> Iterator[Call]:
    """The calls of ``path`` read as ``fmt``."""
    if fmt == "otlp":
        return otlp.read(path)
    if fmt == "litellm-json":
        return litellm.read_json(path)
    if fmt == "litellm-csv":
        return litellm.read_csv(path)
    return jsonl.read(path)
