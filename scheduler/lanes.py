"""Lanes: a provider + model + endpoint, and the batching settings that actually apply to it.

A lane's effective caps are the smaller of its own setting and the provider's limit, so a lane
override can tighten a cap but never push a batch past what the provider accepts. The lane
registry is Redis (``keys.LANES`` plus each lane's meta hash, written at enqueue), so the
scheduler sees every lane that ever held a job without a config change.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from redis.asyncio import Redis

from config.settings import Settings
from scheduler import keys
from scheduler.jobs import lane_name

log = structlog.get_logger(__name__)

# Bytes a request takes in the batch input beyond its body: the JSONL wrapper with custom_id,
# method and url (OpenAI) or params (Anthropic). Counted per job so a full batch stays under the
# provider's byte limit; 256 is above either provider's wrapper for a 64-char custom_id.
LINE_OVERHEAD_BYTES = 256


@dataclass(frozen=True, slots=True)
class Lane:
    """One lane and its effective batching settings."""

    name: str
    provider: str  # the configured provider name (settings.providers key)
    model: str
    endpoint: str
    max_batch_requests: int
    max_batch_bytes: int
    max_wait_s: float
    min_batch_requests: int | None
    cron: tuple[str, ...]
    cron_window_s: float
    timezone: str
    default_deadline_s: float
    completion_window_s: float  # the provider's promise; the turnaround prior before any history

    def batch_bytes(self, requests: int, body_bytes: int) -> int:
        """Bytes ``requests`` jobs with ``body_bytes`` of bodies take in a batch input."""
        return body_bytes + requests * LINE_OVERHEAD_BYTES


class UnknownProvider(LookupError):
    """Raised when a lane names a provider that is not configured."""

    def __init__(self, lane: str, provider: str) -> None:
        super().__init__(lane, provider)
        self.lane = lane
        self.provider = provider

    def __str__(self) -> str:
        return f"lane {self.lane}: provider {self.provider!r} is not configured"


def effective(settings: Settings, provider: str, model: str, endpoint: str) -> Lane:
    """The lane's settings: its overrides on the defaults, caps limited by the provider's."""
    name = lane_name(provider, model, endpoint)
    account = settings.providers.get(provider)
    if account is None:
        raise UnknownProvider(name, provider)
    ls = settings.lane_settings(name)
    requests_cap = account.batch_request_limit()
    bytes_cap = account.batch_byte_limit()
    return Lane(
        name=name,
        provider=provider,
        model=model,
        endpoint=endpoint,
        max_batch_requests=min(ls.max_batch_requests or requests_cap, requests_cap),
        max_batch_bytes=min(ls.max_batch_bytes or bytes_cap, bytes_cap),
        max_wait_s=ls.max_wait if ls.max_wait is not None else 60.0,
        min_batch_requests=ls.min_batch_requests,
        cron=tuple(ls.cron or ()),
        cron_window_s=ls.cron_window_s or 3600.0,
        timezone=ls.timezone or "UTC",
        default_deadline_s=ls.default_deadline or 24 * 3600.0,
        completion_window_s=account.completion_window_s,
    )


async def load_lanes(redis: Redis, settings: Settings) -> list[Lane]:
    """Every lane in the registry with its effective settings, by name; unconfigured ones are logged and left."""
    names = sorted(n.decode() for n in await redis.smembers(keys.LANES))  # type: ignore[misc]
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hmget(keys.lane_meta(name), ["provider", "model", "endpoint"])
        metas = await pipe.execute()
    lanes = []
    for name, (provider, model, endpoint) in zip(names, metas, strict=True):
        if provider is None or model is None or endpoint is None:
            log.warning("lane.meta_missing", lane=name)
            continue
        try:
            lanes.append(effective(settings, provider.decode(), model.decode(), endpoint.decode()))
        except UnknownProvider as exc:
            log.warning("lane.unconfigured", lane=name, provider=exc.provider)
    return lanes
