"""The emulator's prompt-caching model: when a request reports cached input tokens.

Deterministic, so cost tests can assert exact figures, and shaped like the providers' caches so
that how batchshift arranges a batch changes what it pays:

- **OpenAI batch lines** are looked at in the input file's order: a line's prefix is cached when one
  of the ``cache_window`` lines before it in the same batch carried the same prefix (and the same
  ``prompt_cache_key``). A provider works a batch through many machines at once, so a prefix stays
  warm only where requests sharing it arrive together; nothing carries over between batches.
- **OpenAI sync calls** hit a prefix (with the same ``prompt_cache_key``) used within
  :data:`OPENAI_IDLE_TTL_S` on the emulator's clock, by a call with the same API key.
- **Anthropic** (batch and sync) keeps one cache per API key and model (an organisation's): an entry is warm for its TTL after it
  was last written or read (``cache_control.ttl``: ``"1h"`` one hour, else five minutes); a batch
  line uses the time its work ended on the batch's clock. A hit refreshes the entry.

What a prefix is, and the token figures reported, are :mod:`emulator.outputs`'s concern.
"""

from __future__ import annotations

import hashlib
from collections import deque
from typing import Protocol

OPENAI_IDLE_TTL_S = 600.0  # OpenAI: a cached prefix stays warm 5-10 minutes idle; the upper end
ONE_HOUR_S = 3600.0
ANTHROPIC_TTL_S = {"1h": ONE_HOUR_S}
ANTHROPIC_DEFAULT_TTL_S = 300.0  # "5m", the default ephemeral TTL
DEFAULT_WINDOW = 8  # OpenAI batch lines a prefix stays warm for, unless the cache_window setting says


def prefix_key(*parts: str) -> bytes:
    """A cache entry's identity (model, cache key, prefix text...)."""
    return hashlib.sha256("\0".join(parts).encode()).digest()


class Warmth(Protocol):
    """What an answer asks its cache: was this prefix warm? (and it is warm from now on)."""

    def seen(self, key: bytes, ttl_s: float) -> bool: ...


class TimedCache:
    """Entries with the span they were in use and their TTL; the emulator keeps one.

    Batches' results are built when first asked for, not in the order their lines ran, so a use may
    come earlier than one already recorded: an entry is warm at ``now`` when it was first written at
    or before ``now`` and last used no more than its TTL before it (a gap longer than the TTL inside
    the recorded span is not modelled).
    """

    def __init__(self) -> None:
        # (account, key) -> (first use, last use, ttl s)
        self._entries: dict[tuple[str, bytes], tuple[float, float, float]] = {}

    def at(self, now: float, account: str = "") -> Warmth:
        """The cache as a request at ``now`` (epoch seconds) with ``account``'s API key finds it."""
        return _TimedView(self, now, account)

    def use(self, key: bytes, now: float, ttl_s: float, account: str = "") -> bool:
        """Record a use at ``now``; True when the entry was warm then (a read), False (a write)."""
        key_of = (account, key)
        entry = self._entries.get(key_of)
        if entry is not None and entry[0] <= now <= entry[1] + entry[2]:
            self._entries[key_of] = (entry[0], max(entry[1], now), max(entry[2], ttl_s))
            return True
        if entry is not None and now < entry[0] and entry[0] <= now + ttl_s:
            self._entries[key_of] = (now, entry[1], max(entry[2], ttl_s))  # written earlier than known
        else:
            self._entries[key_of] = (now, now, ttl_s)
        return False


class _TimedView:
    def __init__(self, cache: TimedCache, now: float, account: str) -> None:
        self.cache, self.now, self.account = cache, now, account

    def seen(self, key: bytes, ttl_s: float) -> bool:
        return self.cache.use(key, self.now, ttl_s, self.account)


class BatchWindow:
    """One OpenAI batch's recent prefixes: the last ``window`` lines' keys, in input order."""

    def __init__(self, window: int) -> None:
        self.recent: deque[bytes] = deque(maxlen=max(window, 0))

    def seen(self, key: bytes, ttl_s: float) -> bool:
        warm = key in self.recent
        if self.recent.maxlen:
            self.recent.append(key)
        return warm


def anthropic_ttl(ttl: object) -> float:
    """Seconds an Anthropic ``cache_control.ttl`` keeps an entry warm."""
    return (
        ANTHROPIC_TTL_S.get(ttl, ANTHROPIC_DEFAULT_TTL_S) if isinstance(ttl, str) else ANTHROPIC_DEFAULT_TTL_S
    )
