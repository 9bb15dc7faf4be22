"""Long polls: one Redis subscription per API process wakes every request waiting on a job.

Terminal transitions publish the ids of the jobs they ended on ``keys.JOBS_ENDED``. A waiter registers its interest
and makes sure the subscription is live *before* it re-reads the job, so an end that lands
between the read and the wait still wakes it. A lost connection wakes every waiter (they re-read)
and the subscription is made again, so a missed message costs at most a re-read, never a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from scheduler.ledger import keys

log = structlog.get_logger(__name__)

# Seconds between attempts to subscribe again after the connection was lost.
RESUBSCRIBE_DELAY_S = 0.5
# Seconds one read of the subscription waits by default; it must stay under the client's socket
# timeout, or a quiet channel would read as a lost connection.
DEFAULT_WAIT_S = 1.0


class JobWatcher:
    """Wakes waiters when their job ends. Started lazily on the first long poll; closed with the app."""

    def __init__(self, redis: Redis, *, wait_s: float = DEFAULT_WAIT_S) -> None:
        self._redis = redis
        self._wait_s = wait_s
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def watch(self, job_id: str) -> AsyncIterator[asyncio.Event]:
        """Yield an event set when ``job_id`` ends (or on a reconnect); re-read the job after entering."""
        event = asyncio.Event()
        self._waiters.setdefault(job_id, set()).add(event)
        try:
            if self._task is None or self._task.done():
                self._task = asyncio.create_task(self._run(), name="job-watcher")
            await self._subscribed.wait()
            yield event
        finally:
            waiting = self._waiters.get(job_id)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._waiters[job_id]

    async def _run(self) -> None:
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(keys.JOBS_ENDED)
                while True:
                    # A read with its own timeout: the socket timeout never cuts a quiet wait.
                    message = await pubsub.get_message(timeout=self._wait_s)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        # Only the server's confirmation proves later publishes reach us.
                        self._subscribed.set()
                    elif message["type"] == "message":
                        # One message a Lua step: the ids of every job it ended, space-separated.
                        for job_id in message["data"].decode().split():
                            for event in self._waiters.get(job_id, ()):
                                event.set()
            except (RedisError, OSError) as exc:
                log.warning("watcher.disconnected", error_class=type(exc).__name__)
            finally:
                self._subscribed.clear()
                self._wake_all()
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(RESUBSCRIBE_DELAY_S)

    def _wake_all(self) -> None:
        for events in self._waiters.values():
            for event in events:
                event.set()

    async def close(self) -> None:
        """Stop listening; waiters still waiting are woken to re-read."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
