"""A small multipart/form-data reader for the emulator's file uploads.

The body is kept as the pieces it arrived in, and a part's content is a list of those pieces
(trimmed at its two ends), so a 50 MB upload is never copied while it is received: only scanned
once for the boundary. The file is joined, once, when the emulator first reads it whole (batch
validation, which a provider also does after the upload has returned).
"""

from __future__ import annotations

import bisect
from collections.abc import AsyncIterable
from dataclasses import dataclass

from python_multipart.multipart import parse_options_header

MAX_HEADER_BYTES = 16 * 1024  # a part's headers; more means the body is not what it claims


class MultipartError(ValueError):
    """Raised when a body is not well-formed multipart/form-data."""


class BodyTooLarge(MultipartError):
    """Raised as soon as a streamed body passes its size limit, before the rest is read."""


@dataclass(frozen=True, slots=True)
class Part:
    """One form field: its filename (None for a plain field) and its content, in pieces."""

    filename: str | None
    pieces: list[bytes]

    @property
    def size(self) -> int:
        return sum(len(piece) for piece in self.pieces)

    @property
    def content(self) -> bytes:
        return b"".join(self.pieces)


class Pieces:
    """A body as received, addressed by offsets from its start."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = [piece for piece in pieces if piece]
        self.starts: list[int] = []
        total = 0
        for piece in self.pieces:
            self.starts.append(total)
            total += len(piece)
        self.size = total

    def find(self, needle: bytes, start: int) -> int:
        """The offset of ``needle`` at or after ``start``, or -1; a match may straddle pieces."""
        if start >= self.size:
            return -1
        index = bisect.bisect_right(self.starts, start) - 1
        while index < len(self.pieces):
            piece, base = self.pieces[index], self.starts[index]
            found = piece.find(needle, start - base)
            if found >= 0:
                return base + found
            # A match that begins in this piece's last bytes and ends in the next ones.
            edge = max(start, base + len(piece) - len(needle) + 1)
            window = self.slice(edge, edge + 2 * len(needle) - 2)
            found = window.find(needle)
            if found >= 0:
                return edge + found
            index += 1
            start = base + len(piece)
        return -1

    def startswith(self, prefix: bytes, at: int) -> bool:
        return self.slice(at, at + len(prefix)) == prefix

    def slice(self, begin: int, end: int) -> bytes:
        """Bytes ``begin`` to ``end``, copied (for the small parts of a body)."""
        return b"".join(self.span(begin, end))

    def span(self, begin: int, end: int) -> list[bytes]:
        """Bytes ``begin`` to ``end`` as pieces: only the first and last are copied, and only in part."""
        end = min(end, self.size)
        if begin >= end:
            return []
        first = bisect.bisect_right(self.starts, begin) - 1
        last = bisect.bisect_right(self.starts, end - 1) - 1
        out = self.pieces[first : last + 1]
        if first == last:
            return [out[0][begin - self.starts[first] : end - self.starts[first]]]
        head, tail = begin - self.starts[first], end - self.starts[last]
        if head:
            out[0] = out[0][head:]
        if tail < len(out[-1]):
            out[-1] = out[-1][:tail]
        return out


async def read_form(content_type: str, chunks: AsyncIterable[bytes], max_bytes: int) -> dict[str, Part]:
    """The fields of a streamed multipart/form-data body (see :func:`parse_form`) of at most ``max_bytes``."""
    body: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge(f"the body is larger than {max_bytes} bytes")
        body.append(chunk)
    return parse_form(content_type, body)


def parse_form(content_type: str, body: list[bytes]) -> dict[str, Part]:
    """The fields of a multipart/form-data body received in pieces, by name (the last one wins on repeats)."""
    kind, options = parse_options_header(content_type.encode("latin-1"))
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise MultipartError("expected multipart/form-data with a boundary")
    delimiter = b"--" + boundary
    pieces = Pieces(body)
    start = pieces.find(delimiter, 0)
    if start < 0:
        raise MultipartError("no part boundary in the body")
    fields: dict[str, Part] = {}
    position = start + len(delimiter)
    while not pieces.startswith(b"--", position):  # "--" after a delimiter closes the form
        header_end = pieces.find(b"\r\n\r\n", position)
        if header_end < 0 or header_end - position > MAX_HEADER_BYTES:
            raise MultipartError("a part's headers are not terminated")
        next_part = pieces.find(b"\r\n" + delimiter, header_end)
        if next_part < 0:
            raise MultipartError("a part is not terminated")
        name, filename = _disposition(pieces.slice(position, header_end))
        fields[name] = Part(filename, pieces.span(header_end + 4, next_part))
        position = next_part + 2 + len(delimiter)
    return fields


def _disposition(headers: bytes) -> tuple[str, str | None]:
    for line in headers.split(b"\r\n"):
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-disposition":
            _, options = parse_options_header(value.strip())
            name = options.get(b"name")
            if name is None:
                break
            filename = options.get(b"filename")
            return name.decode(), filename.decode() if filename is not None else None
    raise MultipartError("a part has no Content-Disposition name")
