"""Typed decoding of batch result files, shared by the adapters.

msgspec decodes a block of JSONL lines in one call into small structs that name only the fields
we read. A response body is captured as :class:`msgspec.Raw`, its bytes exactly as the provider
sent them: stored unchanged (never re-encoded), and read a second time only for its ``usage``.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from workers.errors import MalformedResponse

LineT = TypeVar("LineT")

NULL = msgspec.Raw(b"null")  # the default of a Raw field the line leaves out


class _UsageRaw(msgspec.Struct):
    usage: msgspec.Raw = NULL


_USAGE_RAW = msgspec.json.Decoder(_UsageRaw)
_USAGE = msgspec.json.Decoder(dict[str, Any] | None)
# Usage objects already decoded, by their bytes: a batch's lines repeat a few token counts, and a
# fresh dict per line (three, with the details) was most of a line's allocations and so of the
# garbage collector's work. Callers share the dict and never change it. Emptied when full.
_USAGES: dict[bytes, dict[str, Any] | None] = {}
USAGE_MEMO = 4096


def decode_lines(decoder: msgspec.json.Decoder[LineT], block: bytes, provider: str) -> list[LineT]:
    """The block's lines (blank ones skipped); MalformedResponse says where a line is wrong, not what it holds."""
    try:
        return decoder.decode_lines(block)
    except msgspec.MsgspecError as exc:
        raise MalformedResponse(f"unreadable {provider} batch result line: {exc}") from exc


def usage_of(body: bytes, provider: str) -> dict[str, Any] | None:
    """The ``usage`` object of a response body, without building the rest of it (shared: read only)."""
    try:
        raw = bytes(_USAGE_RAW.decode(body).usage)
        if raw in _USAGES:
            return _USAGES[raw]
        usage = _USAGE.decode(raw)
    except msgspec.MsgspecError as exc:
        raise MalformedResponse(f"unreadable {provider} result body: {exc}") from exc
    if len(_USAGES) >= USAGE_MEMO:
        _USAGES.clear()
    _USAGES[raw] = usage
    return usage
