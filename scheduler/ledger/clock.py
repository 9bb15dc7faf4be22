"""The clock every batchshift process reads "now" from: Redis's in production, a virtual one in tests.

Leases, expiries and SLO buckets written by many processes are compared by many others, so they
are stamped with the Redis server's ``TIME`` rather than each host's clock: a worker 20 s behind
or 60 s ahead then neither mis-buckets an SLO outcome nor lets a lease or a slot lapse early.

A :class:`Clock` is injected, never looked up: the scheduler's loop reads it once per tick and
passes ``tick(now)``; each worker task reads it from ``ctx["clock"]``. Production uses
:class:`ServerClock`; a test that must not depend on machine speed shares one :class:`ManualClock`
between the tick, the worker and the emulator and moves it in steps.

Lua scripts take ``now`` (or a time computed from it) as an argument from the caller's clock. An
offset key added by every script and every reader would do too, but costs production a read per
script and per clock read for the tests' sake; an argument costs nothing and makes each script a
pure function of its inputs. One exception: when the caller's clock is the very server a script
runs on (:class:`ServerClock` on the same client), the outbox's claim and settle scripts are passed
no time and read ``TIME`` themselves, a round trip less per claim; on any other clock they take it
as an argument like every script.
"""

from __future__ import annotations

from typing import Protocol

from redis.asyncio import Redis


async def server_ms(redis: Redis) -> int:
    """The Redis server's time, in epoch milliseconds."""
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


class Clock(Protocol):
    """Where a process reads "now" (epoch milliseconds)."""

    async def now_ms(self) -> int: ...


class ServerClock:
    """Production's clock: the Redis server's ``TIME``, one round trip a read."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def now_ms(self) -> int:
        return await server_ms(self.redis)


class ManualClock:
    """A virtual clock that moves only when told: every reader sees the same time until then.

    Tests share one between the scheduler's tick, the worker's tasks and the emulator, so an
    outcome depends on the sequence of steps, never on how fast the machine runs them.
    """

    def __init__(self, now_ms: int) -> None:
        self.ms = now_ms

    async def now_ms(self) -> int:
        return self.ms

    @property
    def seconds(self) -> float:
        """The time in epoch seconds, as ``Scheduler.tick`` takes it."""
        return self.ms / 1000

    def advance(self, seconds: float) -> int:
        """Move forward by ``seconds``; returns the new time (ms)."""
        self.ms += round(seconds * 1000)
        return self.ms
