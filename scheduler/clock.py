"""Redis's clock: the one time every batchshift process agrees on.

Leases, expiries and SLO buckets written by many processes are compared by many others, so they
are stamped with the Redis server's ``TIME`` rather than each host's clock: a worker 20 s behind
or 60 s ahead then neither mis-buckets an SLO outcome nor lets a lease or a slot lapse early.
Lua scripts read ``TIME`` themselves; Python reads it once per step with :func:`server_ms`. The
scheduler's decisions still take ``now`` as an argument (``tick(now)``); its loop passes this clock.
"""

from __future__ import annotations

from redis.asyncio import Redis


async def server_ms(redis: Redis) -> int:
    """The Redis server's time, in epoch milliseconds."""
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000
