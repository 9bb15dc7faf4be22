"""Identifiers: time-sortable, unique, and valid as a provider ``custom_id`` (``^[a-zA-Z0-9_-]{1,64}$``)."""

from __future__ import annotations

import secrets
import threading
import time

# Crockford base32: sorts the same as the numbers it encodes, and has no ambiguous letters.
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


# Every 10-bit value as its two characters: an id's parts encode two characters a step (ids are made
# once per job, and the character-a-step loop was a tenth of bulk intake's CPU).
_PAIRS = tuple(a + b for a in _ALPHABET for b in _ALPHABET)


def _encode(value: int, width: int) -> str:
    """The low ``width`` base32 digits of ``value``, most significant first."""
    if width % 2:
        return _ALPHABET[(value >> 5 * (width - 1)) & 31] + _encode(value, width - 1)
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in range(5 * width - 10, -1, -10)])


_RANDOM_BITS = 80
# The last (millisecond, random part) this process made: ids of one millisecond count up from a
# random start, so a bulk request's jobs list in the order they were given (a monotonic ULID).
_last: tuple[int, int, str] = (-1, 0, "")  # and the millisecond's encoding
_lock = threading.Lock()


def new_id(prefix: str, now_ms: int | None = None) -> str:
    """A ULID-shaped id: 10 chars of milliseconds then 16 chars counting up from a random start."""
    global _last
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    with _lock:
        last_ms, last_random, ms_text = _last
        if ms == last_ms and last_random + 1 < 1 << _RANDOM_BITS:
            random_part = last_random + 1
        else:
            random_part = secrets.randbits(_RANDOM_BITS - 1)  # room left to count up within the ms
            if ms != last_ms:
                ms_text = _encode(ms, 10)
        _last = (ms, random_part, ms_text)
    return f"{prefix}_{ms_text}{_encode(random_part, 16)}"


def floor_id(prefix: str, ms: int) -> str:
    """The part every id made at ``ms`` begins with: ids made earlier sort below it, later above."""
    return f"{prefix}_{_encode(ms, 10)}"


def job_id(now_ms: int | None = None) -> str:
    """A new job id; it is also the provider ``custom_id``."""
    return new_id("job", now_ms)


def batch_id(now_ms: int | None = None) -> str:
    """A new batchshift batch id; it tags the provider's batch in metadata."""
    return new_id("bat", now_ms)
