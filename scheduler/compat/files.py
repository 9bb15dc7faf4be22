"""Files uploaded for batches (OpenAI's ``/v1/files``): stored in Redis, appended as they stream in.

A file belongs to the tenant that uploaded it; another tenant's id reads as missing. Content is
read back in slices (GETRANGE), so neither a download nor a batch's validation holds a 200 MB
file in memory whole. Output and error files are not stored here: they are derived from their
batch (:mod:`scheduler.compat.outputs`), named ``file-<batch id>-output`` / ``-errors``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any, Final, Literal

from redis.asyncio import Redis

from scheduler.errors import InvalidRequest
from scheduler.ledger import ids, keys

# Bytes read from Redis per slice of a file's content.
READ_SLICE: Final = 1024 * 1024
DERIVED: Final = re.compile(r"^file-(batch_[0-9A-Z]{26})-(output|errors)$")

Derived = Literal["output", "errors"]


@dataclass(frozen=True, slots=True)
class ClientFile:
    """An uploaded file's metadata."""

    id: str
    tenant: str
    purpose: str
    filename: str
    size: int
    created_ms: int

    def view(self) -> dict[str, Any]:
        """OpenAI's File object."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.size,
            "created_at": self.created_ms // 1000,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


def derived(file_id: str) -> tuple[str, Derived] | None:
    """The batch and kind an output or error file id names, or None for an uploaded file's id."""
    match = DERIVED.fullmatch(file_id)
    return (match.group(1), match.group(2)) if match else None  # type: ignore[return-value]


def derived_id(batch_id: str, kind: Derived) -> str:
    return f"file-{batch_id}-{kind}"


class ClientFiles:
    """Uploads in Redis: metadata hash plus content string, both under CLIENT_FILE_TTL_S."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def create(
        self,
        tenant: str,
        purpose: str,
        filename: str,
        chunks: AsyncIterable[bytes],
        *,
        max_bytes: int,
        now_ms: int,
    ) -> ClientFile:
        """Store an upload as it streams; InvalidRequest (nothing kept) once it passes ``max_bytes``."""
        file_id = ids.new_id("file", now_ms).replace("file_", "file-", 1)
        content = keys.client_file_content(file_id)
        size = 0
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:  # OpenAI answers a batch file over its limit with a 400
                    raise InvalidRequest(f"Batch input files may be at most {max_bytes} bytes.", "file")
                if chunk:
                    await self.redis.append(content, chunk)
        except BaseException:
            await self.redis.delete(content)
            raise
        record = ClientFile(file_id, tenant, purpose, filename, size, now_ms)
        index = keys.tenant_client_files(tenant)
        floor = "file-" + ids.floor_id("file", now_ms - keys.CLIENT_FILE_TTL_S * 1000).removeprefix("file_")
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebylex(index, "-", f"({floor}")
            pipe.zadd(index, {file_id: 0})
            pipe.hset(
                keys.client_file(file_id),
                mapping={
                    "tenant": tenant,
                    "purpose": purpose,
                    "filename": filename,
                    "bytes": size,
                    "created_ms": now_ms,
                },
            )
            pipe.expire(keys.client_file(file_id), keys.CLIENT_FILE_TTL_S)
            pipe.expire(content, keys.CLIENT_FILE_TTL_S)
            await pipe.execute()
        return record

    async def get(self, tenant: str, file_id: str) -> ClientFile | None:
        """The tenant's file, or None (also for another tenant's: existence is not revealed)."""
        raw: dict[bytes, bytes] = await self.redis.hgetall(keys.client_file(file_id))  # type: ignore[misc]
        if not raw or raw[b"tenant"].decode() != tenant:
            return None
        return ClientFile(
            id=file_id,
            tenant=tenant,
            purpose=raw[b"purpose"].decode(),
            filename=raw[b"filename"].decode(),
            size=int(raw[b"bytes"]),
            created_ms=int(raw[b"created_ms"]),
        )

    async def delete(self, tenant: str, file_id: str) -> bool:
        """Delete the tenant's file; False when there is none. A batch made from it runs on."""
        if await self.get(tenant, file_id) is None:
            return False
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.client_file(file_id), keys.client_file_content(file_id))
            pipe.zrem(keys.tenant_client_files(tenant), file_id)
            await pipe.execute()
        return True

    async def page(
        self, tenant: str, *, purpose: str | None, after: str | None, limit: int, newest_first: bool
    ) -> tuple[list[ClientFile], bool]:
        """The tenant's uploads in id (time) order from after ``after``, and whether more follow."""
        index = keys.tenant_client_files(tenant)
        bound: str = f"({after}" if after else ("+" if newest_first else "-")
        page: list[ClientFile] = []
        while True:
            if newest_first:
                found = await self.redis.zrevrangebylex(index, bound, "-", start=0, num=limit + 1)
            else:
                found = await self.redis.zrangebylex(index, bound, "+", start=0, num=limit + 1)
            if not found:
                return page, False
            for raw_id in found:
                bound = f"({raw_id.decode()}"
                record = await self.get(tenant, raw_id.decode())
                if record is None or (purpose and record.purpose != purpose):
                    continue
                if len(page) == limit:
                    return page, True
                page.append(record)
            if len(found) < limit + 1:
                return page, False

    async def content(self, file_id: str) -> AsyncIterator[bytes]:
        """The file's bytes in slices of READ_SLICE."""
        key = keys.client_file_content(file_id)
        start = 0
        while True:
            piece: bytes = await self.redis.getrange(key, start, start + READ_SLICE - 1)
            if piece:
                yield piece
            if len(piece) < READ_SLICE:
                return
            start += READ_SLICE

    async def lines(self, file_id: str) -> AsyncIterator[bytes]:
        """The file's lines (without their ends), a slice at a time."""
        rest = b""
        async for piece in self.content(file_id):
            parts = (rest + piece).split(b"\n")
            rest = parts.pop()
            for part in parts:
                yield part.rstrip(b"\r")
        if rest:
            yield rest.rstrip(b"\r")
