"""Reads a request body as JSON under a byte limit: 413 past the limit, 400 when it is not JSON.

The limit is checked on ``Content-Length`` before reading and on the bytes actually read (a client
may omit or understate the header), so an oversized body is never held in memory whole.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from starlette.requests import ClientDisconnect
from starlette.types import Receive

from scheduler.errors import InvalidRequest, MalformedJSON, PayloadTooLarge


async def read_json(request: Request, limit: int) -> Any:
    """The parsed JSON body, read at most ``limit`` bytes deep."""
    check_declared_length(request.headers.get("content-length"), limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes", "body")
        chunks.append(chunk)
    return parse_json(b"".join(chunks))


async def read_json_asgi(receive: Receive, declared_length: str | None, limit: int) -> Any:
    """``read_json`` for a bare ASGI request (the enqueue fast path): same limits, same errors."""
    check_declared_length(declared_length, limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes", "body")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return parse_json(chunks[0] if len(chunks) == 1 else b"".join(chunks))


def check_declared_length(declared: str | None, limit: int) -> None:
    """Refuse a ``Content-Length`` that is not a number or is over ``limit``, before reading a byte."""
    if declared is not None:
        if not declared.isdigit():
            raise InvalidRequest("Content-Length is not a number", "content-length")
        if int(declared) > limit:
            raise PayloadTooLarge(f"request body is {declared} bytes, over the limit of {limit}", "body")


def parse_json(raw: bytes) -> Any:
    """The JSON value of a whole body; 400 when it is empty or not JSON."""
    if not raw.strip():
        raise MalformedJSON("request body is empty; send a JSON object")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedJSON(f"request body is not valid JSON: {exc}") from None
