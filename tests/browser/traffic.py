"""Real traffic for the browser tests: the scheduler's tick and an arq worker against the emulator,
on a virtual clock, run in a thread of its own with its own event loop.

The browser tests are plain (sync) tests, since Playwright's sync API refuses to run inside a
running event loop; the API is served by uvicorn in another thread (tests.api.harness.serve). So the
pipeline gets a third thread: ``Traffic.run_until(check)`` steps it (the SLO e2e tests'
``Pipeline``, reused by name) until ``check`` holds, and returns. Its clock starts at the wall clock,
where the API stamps the jobs the test enqueues over HTTP, and is caught up to it before each run.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from arq.worker import Worker
from redis.asyncio import Redis

from config.settings import Settings
from emulator.server import EmulatorControl
from scheduler.ledger.clock import ManualClock
from scheduler.ledger.tasks import create_pool
from scheduler.service import build_scheduler
from tests.test_slo_e2e import SETTLE_POLL_S, Pipeline
from workers.worker import worker_settings

T = TypeVar("T")


class Traffic:
    """A Pipeline living on its own event loop thread; its methods block until done."""

    def __init__(self, settings: Settings, emulator: EmulatorControl) -> None:
        self.settings = settings
        self.emulator = emulator
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="traffic", daemon=True)
        self.thread.start()
        self.pipeline: Pipeline | None = None
        self.redis: Redis | None = None

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    async def _start(self) -> None:
        self.redis = Redis.from_url(self.settings.redis_url)
        self.pool = await create_pool(self.settings.redis_url)
        clock = ManualClock(int(time.time() * 1000))
        self.emulator.set_clock(clock.seconds)
        scheduler = build_scheduler(self.settings, self.redis, self.pool, holder="browser")
        options = worker_settings(self.settings, clock=clock) | {"max_jobs": 1}
        worker = Worker(**options, poll_delay=SETTLE_POLL_S, handle_signals=False)
        self.pipeline = Pipeline(scheduler, worker, clock, self.emulator)

    async def _run_until(self, check: Callable[[Redis], Awaitable[bool]], within_s: float) -> None:
        assert self.pipeline is not None
        assert self.redis is not None
        clock = self.pipeline.clock
        clock.advance(max(0.0, time.time() - clock.seconds))  # jobs enqueued over HTTP carry wall time
        self.emulator.set_clock(clock.seconds)
        redis = self.redis
        await self.pipeline.run_until(lambda: check(redis), within_s)

    def run_until(self, check: Callable[[Redis], Awaitable[bool]], within_s: float = 30) -> None:
        """Step the pipeline until ``check(redis)`` holds (fails past ``within_s`` virtual seconds)."""
        self.call(self._run_until(check, within_s))

    async def _close(self) -> None:
        if self.pipeline is not None:
            await self.pipeline.close()
        await self.pool.aclose()
        if self.redis is not None:
            await self.redis.aclose()

    def close(self) -> None:
        try:
            self.call(self._close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()


@contextmanager
def running_traffic(settings: Settings, emulator: EmulatorControl) -> Iterator[Traffic]:
    traffic = Traffic(settings, emulator)
    try:
        traffic.call(traffic._start())
        yield traffic
    finally:
        traffic.close()
