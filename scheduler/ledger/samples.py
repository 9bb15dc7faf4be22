"""The sample lists' format: batch turnarounds and sync latencies, one writer and one reader.

A lane's samples live in a Redis list (``keys.lane_turnarounds``, ``keys.lane_sync_latencies``), each
entry ``"<end_ms>:<seconds>"``, newest first. Batch records (scheduler.planning.batches) and sync
calls (workers) write them; lane health (scheduler.slo.health) reads them.
"""

from __future__ import annotations

from redis.asyncio.client import Pipeline


def sample(end_ms: int, seconds: float) -> str:
    """One sample entry as the lists hold it (writers and tests build entries with this)."""
    return f"{end_ms}:{seconds:.3f}"


def push_sample(pipe: Pipeline, key: str, end_ms: int, seconds: float, history: int) -> None:
    """Queue on ``pipe`` one sample at the head of a sample list, capped at ``history`` entries."""
    pipe.lpush(key, sample(end_ms, seconds))
    pipe.ltrim(key, 0, history - 1)


def parse_sample(entry: bytes) -> tuple[int, float] | None:
    """(end_ms, seconds) of one sample entry as :func:`sample` wrote it; None when malformed."""
    end, _, seconds = entry.partition(b":")
    try:
        return int(end), float(seconds)
    except ValueError:
        return None
