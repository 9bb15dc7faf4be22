"""Reads a request body as JSON under a byte limit: 413 past the limit, 400 when it is not JSON.

The limit is checked on ``Content-Length`` before reading and on the bytes actually read (a client
may omit or understate the header), so an oversized body is never held in memory whole.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request

from scheduler.errors import InvalidRequest, MalformedJSON, PayloadTooLarge


async def read_json(request: Request, limit: int) -> Any:
    """The parsed JSON body, read at most ``limit`` bytes deep."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidRequest("Content-Length is not a number", "content-length")
        if int(declared) > limit:
            raise PayloadTooLarge(f"request body is {declared} bytes, over the limit of {limit}", "body")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes", "body")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise MalformedJSON("request body is empty; send a JSON object")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedJSON(f"request body is not valid JSON: {exc}") from None
