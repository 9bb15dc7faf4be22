"""The batch builder: encodes lines in a provider's batch format, splits by limits, spools to disk.

A batch input is never held in memory: :func:`spool` writes each encoded line to an anonymous
temporary file as it arrives, counting requests and bytes against the provider's limits, and
:class:`BatchInput` hands the file to the upload as a re-readable stream (a retried upload
reads it again from the start). Bodies are copied byte for byte, not re-encoded, unless they
contain a line break (which would break JSONL).
"""

from __future__ import annotations

import functools
import re
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import IO

import orjson

from config.tracing import phase
from workers.errors import BatchTooLarge, InvalidBatchInput
from workers.providers.base import BatchLine

CHUNK_SIZE = 256 * 1024  # upload read size: large enough for throughput, small enough for flat memory
WRITE_BLOCK = 1024 * 1024  # the spool's write buffer: small writes to the file itself cost 3x
# Anthropic's custom_id rule; OpenAI documents none, so any non-empty string passes there.
ANTHROPIC_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclass(frozen=True, slots=True)
class BatchFormat:
    """How one provider lays out a batch input: ``head``, lines joined by ``separator``, ``tail``.

    A line is ``opening`` + the JSON custom_id + the endpoint's ``middle`` + the body + ``closing``.
    """

    head: bytes
    separator: bytes
    tail: bytes
    custom_id: re.Pattern[str] | None  # None: any non-empty custom_id
    opening: bytes
    closing: bytes

    def middle(self, endpoint: str) -> bytes:
        """The bytes between a line's custom_id and its body."""
        raise NotImplementedError

    def encode(self, line: BatchLine, endpoint: str) -> bytes:
        """One line of the batch input, without its separator."""
        custom_id = orjson.dumps(line.custom_id)
        return b"".join((self.opening, custom_id, self.middle(endpoint), self.check(line), self.closing))

    def size(self, line: BatchLine, endpoint: str) -> int:
        """Bytes the line adds to a batch input (its separator included)."""
        return len(self.encode(line, endpoint)) + len(self.separator)

    def check(self, line: BatchLine) -> bytes:
        """The line's body ready to embed; raises InvalidBatchInput for a bad custom_id or body."""
        if not line.custom_id or (self.custom_id is not None and not self.custom_id.match(line.custom_id)):
            raise InvalidBatchInput(line.custom_id, "custom_id is empty or not allowed by the provider")
        body = line.body
        if not (body.startswith(b"{") and body.endswith(b"}")):
            body = body.strip()
            if not (body.startswith(b"{") and body.endswith(b"}")):
                raise InvalidBatchInput(line.custom_id, "body is not a JSON object")
        if b"\n" in body or b"\r" in body:
            try:
                body = orjson.dumps(orjson.loads(body))
            except orjson.JSONDecodeError as exc:
                raise InvalidBatchInput(line.custom_id, f"body is not JSON: {exc}") from exc
        return body


@functools.cache
def _openai_middle(endpoint: str) -> bytes:
    return b',"method":"POST","url":' + orjson.dumps(endpoint) + b',"body":'


class OpenAIFormat(BatchFormat):
    """JSONL, one ``{"custom_id", "method", "url", "body"}`` object a line."""

    def middle(self, endpoint: str) -> bytes:
        return _openai_middle(endpoint)


class AnthropicFormat(BatchFormat):
    """One JSON object ``{"requests": [{"custom_id", "params"}, ...]}``."""

    def middle(self, endpoint: str) -> bytes:
        return b',"params":'


OPENAI_FORMAT = OpenAIFormat(
    head=b"", separator=b"\n", tail=b"\n", custom_id=None, opening=b'{"custom_id":', closing=b"}"
)
ANTHROPIC_FORMAT = AnthropicFormat(
    head=b'{"requests":[',
    separator=b",",
    tail=b"]}",
    custom_id=ANTHROPIC_CUSTOM_ID,
    opening=b'{"custom_id":',
    closing=b"}",
)


class BatchInput:
    """A batch input spooled to an anonymous temporary file; close it (or use ``with``) when done."""

    def __init__(self, fmt: BatchFormat, endpoint: str, request_limit: int, byte_limit: int) -> None:
        self.fmt = fmt
        self.endpoint = endpoint
        self.request_limit = request_limit
        self.byte_limit = byte_limit
        # A write buffer of WRITE_BLOCK: lines gather in it, and reach the file in large writes.
        self.file: IO[bytes] = tempfile.TemporaryFile(buffering=WRITE_BLOCK)  # closed by close()
        self.file.write(fmt.head)
        self.requests = 0
        self.nbytes = len(fmt.head) + len(fmt.tail)
        self._ids: set[str] = set()
        self._finished = False

    def add(self, line: BatchLine) -> None:
        """Append a line; raises BatchTooLarge past a limit, InvalidBatchInput on a bad or repeated line."""
        custom_id = line.custom_id
        if custom_id in self._ids:
            raise InvalidBatchInput(custom_id, "custom_id repeated in the batch")
        encoded = self.fmt.encode(line, self.endpoint)
        separator = self.fmt.separator if self.requests else b""
        extra = len(separator) + len(encoded)
        if self.requests >= self.request_limit or self.nbytes + extra > self.byte_limit:
            raise BatchTooLarge(self.requests + 1, self.nbytes + extra, self.request_limit, self.byte_limit)
        self.file.write(separator)
        self.file.write(encoded)
        self._ids.add(custom_id)
        self.requests += 1
        self.nbytes += extra

    def finish(self) -> None:
        """Write the format's tail; after this the input is ready to upload."""
        if not self._finished:
            self.file.write(self.fmt.tail)
            self.file.flush()
            self._finished = True

    async def chunks(self) -> AsyncIterator[bytes]:
        """The whole input from the start, in chunks (each call starts over, so retries re-read)."""
        self.file.seek(0)
        while chunk := self.file.read(CHUNK_SIZE):
            yield chunk

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> BatchInput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Rereadable:
    """An async iterable over a spooled input that can be iterated more than once (retries)."""

    def __init__(self, spool: BatchInput) -> None:
        self.spool = spool

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.spool.chunks()


async def spool(
    lines: AsyncIterable[BatchLine] | Iterable[BatchLine],
    fmt: BatchFormat,
    *,
    endpoint: str,
    request_limit: int,
    byte_limit: int,
) -> BatchInput:
    """Spool ``lines`` to a temporary file; raises before anything is sent if they break a limit.

    A ``batch.spool`` phase of the span open (a submission's), reading the lines included."""
    batch = BatchInput(fmt, endpoint, request_limit, byte_limit)
    with phase("batch.spool") as span:
        try:
            if isinstance(lines, AsyncIterable):
                async for line in lines:
                    batch.add(line)
            else:
                for line in lines:
                    batch.add(line)
            if batch.requests == 0:
                raise InvalidBatchInput("", "a batch needs at least one line")
            batch.finish()
        except BaseException:
            batch.close()
            raise
        span.set(**{"batchshift.requests": batch.requests, "batchshift.input_bytes": batch.nbytes})
    return batch


def split(
    lines: Iterable[BatchLine], fmt: BatchFormat, *, endpoint: str, request_limit: int, byte_limit: int
) -> Iterator[list[BatchLine]]:
    """Group lines, in order, into batches under both limits; a line too big for any batch raises."""
    room = byte_limit - len(fmt.head) - len(fmt.tail)
    group: list[BatchLine] = []
    used = 0
    for line in lines:
        size = len(fmt.encode(line, endpoint))
        extra = size + (len(fmt.separator) if group else 0)
        if group and (len(group) >= request_limit or used + extra > room):
            yield group
            group, used, extra = [], 0, size
        if extra > room:
            raise BatchTooLarge(1, size + len(fmt.head) + len(fmt.tail), request_limit, byte_limit)
        group.append(line)
        used += extra
    if group:
        yield group
