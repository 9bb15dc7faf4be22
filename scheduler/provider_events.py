"""Provider batch events: a webhook saying a batch ended, taken into the batch record at once.

OpenAI sends ``batch.completed``, ``batch.expired``, ``batch.cancelled`` and ``batch.failed``
when a batch ends (Standard Webhooks, verified by the API). :func:`take_event` turns one into a
guarded step: a batch still ``submitted`` that completed, expired or was cancelled becomes
``ended`` (its results, partial or whole, are then ingested; the caller enqueues ingestion at
once); a failed one has its next poll pulled to now, since only the provider's batch object says
why it failed and whether that is worth retrying. Any other state (already ended, ingested,
cancelled by us, unknown) changes nothing, so a repeated or late event is harmless. An event that
outruns the submission's last step (the provider's id not recorded yet) is kept, and that step
polls the batch at once (:func:`first_poll_s`). With events configured, polling stays as the
safety net at :func:`safety_poll_s`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from redis.asyncio import Redis

from config.settings import ProviderSettings, Settings
from scheduler.ledger import keys
from scheduler.planning.batches import Batches
from scheduler.slo.health import observed_turnaround_s

# OpenAI's terminal batch event types -> the batch status each one reports.
EVENT_STATUS: Final = {
    "batch.completed": "completed",
    "batch.expired": "expired",
    "batch.cancelled": "cancelled",
    "batch.failed": "failed",
}

Taken = Literal["ended", "poll", "unknown_batch", "unchanged"]


@dataclass(frozen=True, slots=True)
class EventOutcome:
    """What one event did: ``ended`` (hand the batch to ingestion now), ``poll`` (poll it now:
    ``poll_due_ms`` is the due time set), ``unknown_batch`` or ``unchanged``."""

    taken: Taken
    batch_id: str | None = None
    poll_due_ms: int = 0


def webhooks_configured(provider: ProviderSettings | None) -> bool:
    """Whether ``provider`` tells us of batch ends by webhook (a signing secret is set)."""
    return provider is not None and provider.webhook_secret is not None


def safety_poll_s(interval_s: float, provider: ProviderSettings | None) -> float:
    """The next poll interval: ``interval_s``, or at least ``webhook_poll_s`` once events arrive by
    webhook (polling is then only the safety net for an event that never came)."""
    if provider is not None and webhooks_configured(provider):
        return max(interval_s, provider.webhook_poll_s)
    return interval_s


async def first_poll_s(
    redis: Redis, settings: Settings, provider: str, provider_batch_id: str, interval_s: float
) -> float:
    """The first poll of a batch just recorded as submitted: at once if an event already said it
    ended (it arrived before the id was recorded), else :func:`safety_poll_s` of ``interval_s``."""
    configured = settings.providers.get(provider)
    if webhooks_configured(configured) and await redis.exists(
        keys.provider_early_end(provider, provider_batch_id)
    ):
        return 0.0
    return safety_poll_s(interval_s, configured)


async def take_event(
    redis: Redis, settings: Settings, provider: str, provider_batch_id: str, status: str, now_ms: int
) -> EventOutcome:
    """Take the event "provider batch ``provider_batch_id`` ended with ``status``" at ``now_ms``."""
    raw = await redis.hget(keys.provider_batches(provider), provider_batch_id)  # type: ignore[misc]
    if raw is None:
        # Perhaps ours, its id not recorded yet: leave word for the submission (:func:`first_poll_s`),
        # then look again, so that one of the two sees the other whatever the order.
        early = keys.provider_early_end(provider, provider_batch_id)
        await redis.set(early, status, ex=keys.PROVIDER_EVENT_TTL_S)
        raw = await redis.hget(keys.provider_batches(provider), provider_batch_id)  # type: ignore[misc]
        if raw is None:
            return EventOutcome("unknown_batch")
    batch_id = raw.decode()
    batches = Batches(redis)
    record = await batches.get(batch_id)
    if record is None or record.state != "submitted":
        return EventOutcome("unchanged", batch_id)
    if status == "failed":
        moved = await batches.update(batch_id, ("submitted",), now_ms=now_ms, next_poll_ms=now_ms)
        return EventOutcome("poll" if moved.status == "ok" else "unchanged", batch_id, now_ms)
    # Left in the poll set (as poll_batch does) until the caller has enqueued ingestion: a crash in
    # between is healed by that poll, which finds the batch ended and hands it over again.
    moved = await batches.update(
        batch_id,
        ("submitted",),
        now_ms=now_ms,
        to_state="ended",
        next_poll_ms=now_ms + int(settings.scheduler.poll_initial_s * 1000),
        ended_ms=now_ms,
        status=status,
        ended_by="event",
    )
    if moved.status != "ok":
        return EventOutcome("unchanged", batch_id)
    if status != "cancelled" and record.submitted_ms is not None:
        # The event is the end observed on our clock (no poll gap to halve).
        seconds = observed_turnaround_s(record.submitted_ms, now_ms, now_ms)
        await batches.push_turnaround(record.lane, now_ms, seconds, settings.slo.history_size)
    return EventOutcome("ended", batch_id)


async def handed_over(redis: Redis, batch_id: str, now_ms: int) -> None:
    """Ingestion is enqueued: the batch leaves the poll set (guarded: only while ``ended``)."""
    await Batches(redis).update(batch_id, ("ended",), now_ms=now_ms, next_poll_ms="del")
