"""Burn rates: a lane's on-time SLO outcomes summed over sliding windows, kept up to date incrementally.

The ledger's finish step counts each finished job into a per-lane hash of time buckets
(:func:`scheduler.keys.slo_buckets`, fields ``<bucket_start_s>:all|good|bad|sync``). A three-day
window of ten-second buckets is ~26,000 buckets, too many to read every tick, so
:class:`BucketWindows` reads the whole hash once, then each tick only the buckets that closed
since, keeping one running sum per window (add on the right, subtract on the left). The newest
two buckets stay "open" and are read live each tick, since a finish stamped a moment ago may
still land in them. Buckets older than the longest window are deleted here.

Burn rate = bad fraction / (1 - target) (SRE Workbook): 1.0 spends the error budget exactly over
the SLO period.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from scheduler.ledger import keys

KINDS = ("all", "good", "bad", "sync")
# Buckets kept open (read live, not folded): the current one and the one before it.
OPEN_BUCKETS = 2


@dataclass(slots=True)
class Counts:
    """Finished jobs in a span: all, on time (good), late (bad), by sync or flex (sync)."""

    all: int = 0
    good: int = 0
    bad: int = 0
    sync: int = 0

    def add(self, other: Counts, sign: int = 1) -> None:
        self.all += sign * other.all
        self.good += sign * other.good
        self.bad += sign * other.bad
        self.sync += sign * other.sync

    def burn_rate(self, target: float) -> float:
        """Bad fraction over the error budget (1 - target); 0 with no jobs."""
        return (self.bad / self.all) / (1 - target) if self.all else 0.0

    def on_time_ratio(self) -> float | None:
        return self.good / self.all if self.all else None

    def sync_share(self) -> float | None:
        return self.sync / self.all if self.all else None


class BucketWindows:
    """Running sums of one lane's SLO buckets over a fixed set of windows (seconds)."""

    def __init__(self, lane: str, width_s: int, windows_s: Iterable[float]) -> None:
        self.lane = lane
        self.width = width_s
        self.windows = sorted(set(windows_s))
        self.longest = self.windows[-1]
        self._starts: list[int] = []  # folded (closed) buckets, ascending
        self._counts: list[Counts] = []
        self._left = {w: 0 for w in self.windows}  # first folded index inside each window
        self._sums = {w: Counts() for w in self.windows}
        self._folded_to: int | None = None  # bucket starts below this are folded
        self._live: dict[int, Counts] = {}
        self._now_s = 0.0
        self._stale: list[int] = []  # starts to delete from Redis on the next refresh
        self._pending: list[int] | None = None  # bucket starts the queued reads ask for; None: all

    def _closed_before(self, now_s: float) -> int:
        return (math.floor(now_s / self.width) - OPEN_BUCKETS + 1) * self.width

    async def refresh(self, redis: Redis, now_s: float) -> None:
        """Bring the sums up to ``now_s``: fold newly closed buckets, re-read the open ones."""
        async with redis.pipeline(transaction=False) as pipe:
            self.queue_reads(pipe, now_s)
            replies = await pipe.execute()
        deletes = self.apply(replies, now_s)
        if deletes:
            await redis.hdel(*deletes)  # type: ignore[misc]

    def queue_reads(self, pipe: Pipeline, now_s: float) -> int:
        """Queue this refresh's reads on ``pipe`` (the whole hash, or the buckets since the last fold),
        and the deletion of buckets folded out of every window; returns how many replies it queued,
        which :meth:`apply` takes. The SLO step queues every lane's on one pipeline: one round trip
        for all lanes."""
        key = keys.slo_buckets(self.lane)
        closed_before = self._closed_before(now_s)
        current = math.floor(now_s / self.width) * self.width
        if self._folded_to is None or closed_before - self._folded_to > self.longest:
            self._pending = None
            pipe.hgetall(key)
            return 1
        self._pending = list(range(self._folded_to, current + self.width, self.width))
        pipe.hmget(key, [f"{s}:{k}" for s in self._pending for k in KINDS])
        if not self._stale:
            return 1
        pipe.hdel(key, *[f"{s}:{k}" for s in self._stale for k in KINDS])
        return 2

    def apply(self, replies: Sequence[Any], now_s: float) -> tuple[str, ...]:
        """Fold the replies of :meth:`queue_reads` at the same ``now_s``; returns ``(key, field, ...)``
        of buckets too old for any window found by a whole-hash read (to ``HDEL``), or ``()``."""
        closed_before = self._closed_before(now_s)
        if self._pending is None:
            deletes = self._load(replies[0], now_s, closed_before)
        else:
            self._stale = []  # deleted by the reads' pipeline
            deletes = ()
            values = replies[0]
            found = {}
            for i, start in enumerate(self._pending):
                row = values[i * 4 : i * 4 + 4]
                found[start] = Counts(*(int(v) if v else 0 for v in row))
            self._live = {s: c for s, c in found.items() if s >= closed_before}
            for start in self._pending:
                if start < closed_before:
                    self._fold(start, found[start])
            self._folded_to = closed_before
        self._advance(now_s)
        return deletes

    def _load(self, raw: dict[bytes, bytes], now_s: float, closed_before: int) -> tuple[str, ...]:
        buckets: dict[int, Counts] = {}
        old: list[str] = []
        oldest = now_s - self.longest - self.width
        for field, value in raw.items():
            start_s, _, kind = field.decode().partition(":")
            try:
                start = int(start_s)
            except ValueError:
                continue
            if start < oldest:
                old.append(field.decode())
                continue
            if kind in KINDS:
                setattr(buckets.setdefault(start, Counts()), kind, int(value))
        self._starts, self._counts = [], []
        self._left = {w: 0 for w in self.windows}
        self._sums = {w: Counts() for w in self.windows}
        self._live = {s: c for s, c in buckets.items() if s >= closed_before}
        for start in sorted(s for s in buckets if s < closed_before):
            self._fold(start, buckets[start])
        self._folded_to = closed_before
        return (keys.slo_buckets(self.lane), *old) if old else ()

    def _fold(self, start: int, counts: Counts) -> None:
        if not counts.all and not counts.sync:
            return  # most buckets are empty: keep only those that count
        self._starts.append(start)
        self._counts.append(counts)
        for w in self.windows:
            self._sums[w].add(counts)

    def _advance(self, now_s: float) -> None:
        self._now_s = now_s
        for w in self.windows:
            left = self._left[w]
            while left < len(self._starts) and self._starts[left] < now_s - w:
                self._sums[w].add(self._counts[left], -1)
                left += 1
            self._left[w] = left
        drop = self._left[self.longest]
        if drop and drop * 2 >= len(self._starts):
            self._stale.extend(self._starts[:drop])
            del self._starts[:drop]
            del self._counts[:drop]
            for w in self.windows:
                self._left[w] -= drop

    def sums(self, window_s: float) -> Counts:
        """Finished jobs over the last ``window_s`` seconds (one of the configured windows)."""
        out = Counts()
        out.add(self._sums[window_s])
        for start, counts in self._live.items():
            if start >= self._now_s - window_s:
                out.add(counts)
        return out
