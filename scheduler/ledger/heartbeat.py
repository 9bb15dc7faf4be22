"""A heartbeat that renews a lease while a body of work runs, stopped between beats, never mid-call.

Cancelling a task while it waits on Redis can leave it hanging: with a socket timeout set,
redis-py wraps each command in ``asyncio.wait_for``, and a cancellation arriving there may never
complete (seen with Python 3.11). So the beat is asked to stop and ends after the call it is in,
which the socket timeout bounds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress

import structlog
from redis.exceptions import RedisError

log = structlog.get_logger(__name__)


@asynccontextmanager
async def heartbeat(
    beat: Callable[[], Awaitable[bool]], interval_s: float, *, immediate: bool = False, name: str = "lease"
) -> AsyncIterator[None]:
    """Call ``beat`` every ``interval_s`` (first at once when ``immediate``) while the body runs.

    ``beat`` returns False when there is nothing left to keep alive; a Redis error is logged and the
    next beat tries again, since the lease still runs until it lapses.
    """
    stop = asyncio.Event()

    async def loop() -> None:
        wait = not immediate
        while True:
            if wait:
                with suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval_s)
            wait = True
            if stop.is_set():
                return
            try:
                if not await beat():
                    return
            except (RedisError, OSError) as exc:
                log.warning("heartbeat.failed", lease=name, error_class=type(exc).__name__)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        stop.set()
        await task
