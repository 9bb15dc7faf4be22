"""A job's timeline, from what the ledger keeps: the job hash's stamps (``created_ms``,
``batched_ms``, ``flipped_ms``, ``completed_ms``, each written by the Lua step that made the change)
and its completion webhook's delivery (every attempt in ``attempt_log``, written by the outbox's
settle step). A pure function of those two hashes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from scheduler.ledger.jobs import JobRecord, iso


@dataclass(frozen=True, slots=True)
class Event:
    at_ms: int
    name: str  # enqueued | batched | flipped | ended | webhook queued | webhook attempt | ...
    detail: str

    @property
    def at(self) -> str:
        return iso(self.at_ms) or ""


def _ms(value: bytes | str | None) -> int | None:
    if isinstance(value, bytes):
        value = value.decode()
    return int(value) if value else None


def job_events(job: JobRecord) -> list[Event]:
    """Enqueued, batched, flipped to sync and ended, as far as the job got."""
    events = [Event(job.created_ms, "enqueued", f"lane {job.lane}, deadline {iso(job.deadline_ms)}")]
    if (batched := _ms(job.raw.get("batched_ms"))) is not None:
        events.append(Event(batched, "batched", f"batch {job.batch_id or '?'}"))
    if (flipped := _ms(job.raw.get("flipped_ms"))) is not None:
        events.append(Event(flipped, "flipped", "sent to the provider's sync API before its deadline"))
    if job.completed_ms is not None:
        on_time = "on time" if job.completed_ms <= job.deadline_ms else "late"
        events.append(
            Event(job.completed_ms, "ended", f"{job.state} by {job.route or 'no route'}, {on_time}")
        )
    return events


def delivery_events(delivery: dict[str, str]) -> list[Event]:
    """The completion webhook: queued, each attempt with its answer, then delivered or dead."""
    if not delivery:
        return []
    events: list[Event] = []
    if (created := _ms(delivery.get("created_ms"))) is not None:
        events.append(Event(created, "webhook queued", f"to {delivery.get('url', '?')}"))
    log: list[Any] = orjson.loads(delivery["attempt_log"]) if delivery.get("attempt_log") else []
    for at_ms, status, error in log:
        answer = f"HTTP {status}" if status else "no answer"
        events.append(Event(int(at_ms), "webhook attempt", f"{answer}{': ' + error if error else ''}"))
    if (delivered := _ms(delivery.get("delivered_ms"))) is not None:
        events.append(Event(delivered, "webhook delivered", "the receiver answered 2xx"))
    if (dead := _ms(delivery.get("dead_ms"))) is not None:
        events.append(Event(dead, "webhook dead-lettered", delivery.get("last_error") or "retries exhausted"))
    return events


def timeline(job: JobRecord, delivery: dict[str, str]) -> list[Event]:
    """Every event, oldest first (a stable sort keeps same-millisecond events in causal order)."""
    return sorted(job_events(job) + delivery_events(delivery), key=lambda e: e.at_ms)
