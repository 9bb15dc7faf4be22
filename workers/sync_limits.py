"""The sync lane's per-provider limits: concurrency, requests and tokens per minute, and the provider's say.

Every worker shares the limits through Redis, so they hold across processes:

* concurrency (``sync_concurrency``): a slot per call in a sorted set scored by when the slot lapses,
  so a worker that dies mid-call frees its slot after one call's worst case (:func:`slot_ttl_s`), or,
  for a caller that renews it while its call runs (run_sync's heartbeat), after ``slot_s``;
* ``sync_rpm`` / ``sync_tpm``: counters per epoch minute (tokens estimated from the body before the
  call, since the answer's usage is not known yet);
* the provider's own signal: ``x-ratelimit-remaining-requests`` / ``-tokens`` at 0 hold the provider
  until ``x-ratelimit-reset-*``, and a 429's ``retry-after`` holds it that long (``keys.sync_hold``).

Slot expiry, minutes and holds are stamped with the Redis server's clock (:mod:`scheduler.ledger.clock`)
unless a caller passes ``now_ms``, so a worker whose clock is off neither frees others' slots early
nor keeps its own too long.

:meth:`SyncLimits.acquire` answers with a :class:`Permit` or the seconds to wait; a job that must
wait is handed back to the dispatch (no provider call, no attempt spent).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from redis.asyncio import Redis

from config.settings import ProviderSettings
from scheduler.costs import tokens
from scheduler.ledger import keys
from scheduler.ledger.clock import Clock, ServerClock

# Seconds a concurrency slot is held at most: past any sync call's read timeout.
SLOT_MARGIN_S = 10


def slot_ttl_s(config: ProviderSettings) -> float:
    """How long a slot outlives a worker that died holding it: one call's worst case, plus a margin."""
    http = config.http
    return http.pool_timeout + http.connect_timeout + http.write_timeout + http.read_timeout + SLOT_MARGIN_S


# Seconds to wait when no slot is free: about one short sync call.
SLOT_WAIT_S = 0.5

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+)ms)?$")


def estimate_tokens(body: bytes) -> int:
    """Input tokens from the body's size, plus its output cap when it names one (:mod:`scheduler.costs.tokens`)."""
    return sum(tokens.estimate(body))


def reset_seconds(raw: str | None) -> float | None:
    """OpenAI's reset durations (``"1s"``, ``"6m0s"``, ``"20ms"``) or plain seconds, in seconds."""
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    m = _DURATION.match(raw.strip())
    if not m or not any(m.groups()):
        return None
    h, mins, s, ms = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mins * 60 + s + ms / 1000


@dataclass(frozen=True, slots=True)
class Permit:
    """A held concurrency slot; release it when the call is over."""

    provider: str
    token: str


class SyncLimits:
    """Shared per-provider limits for sync calls."""

    def __init__(self, redis: Redis, clock: Clock | None = None) -> None:
        self.redis = redis
        self.clock = clock or ServerClock(redis)  # the worker's ctx["clock"]

    async def acquire(
        self,
        provider: str,
        config: ProviderSettings,
        body: bytes,
        now_ms: int | None = None,
        *,
        slot_s: float | None = None,
    ) -> Permit | float:
        """A permit to call the provider now, or the seconds to wait before asking again.

        ``slot_s``: how long the slot lives unless renewed (default :func:`slot_ttl_s`); a caller
        whose call may outlast it renews it while the call runs (``sync_heartbeat.lua``).
        """
        now = await self.clock.now_ms() if now_ms is None else now_ms
        hold = await self.redis.get(keys.sync_hold(provider))
        if hold is not None and int(hold) > now:
            return (int(hold) - now) / 1000
        minute = now // 60_000
        wait_minute = (60_000 - now % 60_000) / 1000
        if config.sync_rpm is not None or config.sync_tpm is not None:
            needed = estimate_tokens(body)
            req_key, tok_key = (
                keys.sync_rate(provider, "requests", minute),
                keys.sync_rate(provider, "tokens", minute),
            )
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.incr(req_key)
                pipe.expire(req_key, 120)
                pipe.incrby(tok_key, needed)
                pipe.expire(tok_key, 120)
                requests, _, used, _ = await pipe.execute()
            over_rpm = config.sync_rpm is not None and requests > config.sync_rpm
            # A single request larger than the whole budget still goes, alone, in a fresh minute.
            over_tpm = config.sync_tpm is not None and used > config.sync_tpm and used != needed
            if over_rpm or over_tpm:
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.decr(req_key)
                    pipe.decrby(tok_key, needed)
                    await pipe.execute()
                return wait_minute
        slots = keys.sync_slots(provider)
        token = secrets.token_hex(8)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(slots, "-inf", now)
            life_s = slot_ttl_s(config) if slot_s is None else slot_s
            pipe.zadd(slots, {token: now + int(life_s * 1000)})
            pipe.zcard(slots)
            _, _, held = await pipe.execute()
        if held > config.sync_concurrency:
            await self.redis.zrem(slots, token)
            return SLOT_WAIT_S
        return Permit(provider, token)

    async def release(self, permit: Permit) -> None:
        await self.redis.zrem(keys.sync_slots(permit.provider), permit.token)

    async def observe(
        self, provider: str, headers: Mapping[str, str], now_ms: int | None = None
    ) -> float | None:
        """Hold the provider when its headers say a limit is spent; returns the hold in seconds, if any."""
        wait: float | None = None
        for unit in ("requests", "tokens"):
            remaining = headers.get(f"x-ratelimit-remaining-{unit}")
            if remaining is not None and remaining.strip() in ("0", "0.0"):
                reset = reset_seconds(headers.get(f"x-ratelimit-reset-{unit}")) or 1.0
                wait = max(wait or 0.0, reset)
        if wait is not None:
            await self.hold(provider, wait, now_ms)
        return wait

    async def hold(self, provider: str, seconds: float, now_ms: int | None = None) -> None:
        """No sync call to ``provider`` for ``seconds`` (a 429's retry-after, spent rate limits)."""
        now = await self.clock.now_ms() if now_ms is None else now_ms
        until = now + int(seconds * 1000)
        current = await self.redis.get(keys.sync_hold(provider))
        if current is not None and int(current) >= until:
            return  # a longer hold is already in force: a short retry-after must not cut it
        # The stamp ends the hold (read against the caller's clock); PX only clears it away later.
        await self.redis.set(keys.sync_hold(provider), until, px=until - now + keys.HOLD_GRACE_S * 1000)
