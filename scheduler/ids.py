"""Identifiers: time-sortable, unique, and valid as a provider ``custom_id`` (``^[a-zA-Z0-9_-]{1,64}$``)."""

from __future__ import annotations

import secrets
import time

# Crockford base32: sorts the same as the numbers it encodes, and has no ambiguous letters.
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _encode(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        value, rem = divmod(value, 32)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars))


def new_id(prefix: str, now_ms: int | None = None) -> str:
    """A ULID-shaped id: 10 chars of milliseconds then 16 random chars, behind ``prefix_``."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    return f"{prefix}_{_encode(ms, 10)}{_encode(secrets.randbits(80), 16)}"


def job_id(now_ms: int | None = None) -> str:
    """A new job id; it is also the provider ``custom_id``."""
    return new_id("job", now_ms)


def batch_id(now_ms: int | None = None) -> str:
    """A new batchshift batch id; it tags the provider's batch in metadata."""
    return new_id("bat", now_ms)
