"""The long-running processes: scheduler, worker, and all of them in one (``batchshift run``).

Each installs its own SIGTERM/SIGINT handling so shutdown is graceful: the scheduler hands its lease
over, the API stops accepting connections and finishes the requests in flight, and the worker
stops picking tasks and lets those in flight finish (up to ``grace_s``). A task cut short is safe:
every task is idempotent and guarded, and arq runs it again on the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import structlog
import uvicorn
from arq.worker import Worker
from redis.exceptions import RedisError

from api.app import create_app
from batchshift.server_version import check_server as check_version
from config.settings import Settings
from config.tracing import Tracing
from scheduler import policy
from scheduler.ledger.store import check_server, connect, connect_arq
from scheduler.service import build_scheduler
from workers.worker import close_worker, worker_settings

log = structlog.get_logger(__name__)

T = TypeVar("T")

# Seconds tasks in flight get to finish after SIGTERM before the worker cancels them.
DEFAULT_GRACE_S = 30.0
# Longest wait between two attempts to start a worker while Redis is out of reach.
MAX_RESTART_BACKOFF_S = 30.0
FIRST_RESTART_DELAY_S = 0.5  # doubled per restart in a row (scheduler.policy.backoff, no jitter)


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run a process's main coroutine on uvloop where it is installed (as uvicorn does for the API):
    its event loop and socket transports are C, so ``batchshift run``, ``scheduler`` and ``worker``
    pay less loop overhead per webhook, Redis reply and request.

    What is alive when the process starts (modules, settings) lives as long as it: frozen out of
    the collector's reach, full collections, which a batch's parsed lines trigger, no longer walk it."""
    gc.freeze()
    try:
        import uvloop
    except ImportError:  # not built for this platform (uvicorn[standard] skips it on Windows)
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the process owns SIGTERM and stops every part."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _serve_api(server: _Server) -> int:
    """uvicorn's serve, its exit code if it fails to start (a port in use, which uvicorn logs): it
    raises SystemExit, which asyncio reports a second time as a task exception never retrieved."""
    try:
        await server.serve()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def _stop_event() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _drain(worker: Worker, grace_s: float) -> None:
    """Stop picking tasks, give those in flight ``grace_s`` to finish, then close the worker."""
    worker.allow_pick_jobs = False
    in_flight = [t for t in worker.tasks.values() if not t.done()]
    if in_flight:
        log.info("worker.draining", tasks=len(in_flight), grace_s=grace_s)
        await asyncio.wait(in_flight, timeout=grace_s)
    await close_worker(worker)


class SupervisedWorker:
    """An arq worker that outlives a Redis outage.

    arq's worker ends when its Redis connection fails; this one then closes it and starts a new
    one with a backoff, so a Redis restart does not take a worker (or ``batchshift run``) down.
    Tasks cut short are safe to run again: every task is idempotent and guarded.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        max_backoff_s: float = MAX_RESTART_BACKOFF_S,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        self.max_backoff_s = max_backoff_s
        self.tracing = tracing  # shared with the process's other parts; None: each worker builds its own
        self.worker: Worker | None = None
        self.restarts = 0
        self._stopping = False
        self._checked = False

    async def run(self) -> None:
        """Run workers one after another until :meth:`drain` is called."""
        while not self._stopping:
            self.worker = Worker(**worker_settings(self.settings, tracing=self.tracing), handle_signals=False)
            try:
                if not self._checked:  # UnsupportedServer is not retried: the server will not get newer
                    await check_redis(self.settings)
                    self._checked = True
                await self.worker.main()
                return
            except (RedisError, OSError) as exc:
                if self._stopping:
                    return
                delay = policy.backoff(self.restarts, FIRST_RESTART_DELAY_S, self.max_backoff_s, None)
                log.warning("worker.redis_unavailable", error_class=type(exc).__name__, retry_in_s=delay)
                with contextlib.suppress(RedisError, OSError):
                    await close_worker(self.worker)
                self.restarts += 1
                await asyncio.sleep(delay)

    async def drain(self, grace_s: float) -> None:
        """Stop for good: let the tasks in flight finish (up to ``grace_s``), then close."""
        self._stopping = True
        if self.worker is not None:
            with contextlib.suppress(RedisError, OSError):
                await _drain(self.worker, grace_s)


async def check_redis(settings: Settings) -> None:
    """Log the server's version at startup and raise UnsupportedServer below the minimum; then
    check its eviction policy and AOF (logged, never fatal)."""
    redis = connect(settings)
    try:
        await check_version(redis)
        await check_server(redis)
    finally:
        await redis.aclose()


async def run_scheduler(settings: Settings) -> None:
    """The scheduler's tick loop until SIGTERM; standbys wait for the lease."""
    stop = _stop_event()
    await check_redis(settings)
    redis = connect(settings)
    arq_pool = connect_arq(settings)
    try:
        async with build_scheduler(settings, redis, arq_pool) as scheduler:
            loop_task = asyncio.create_task(scheduler.run_forever())
            stop_task = asyncio.create_task(stop.wait())
            await asyncio.wait({loop_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            await scheduler.close()
            stop_task.cancel()
            await loop_task
    finally:
        await arq_pool.aclose()
        await redis.aclose()
    log.info("scheduler.stopped")


async def run_worker(settings: Settings, grace_s: float = DEFAULT_GRACE_S) -> None:
    """The arq worker until SIGTERM, draining tasks in flight."""
    stop = _stop_event()
    worker = SupervisedWorker(settings)  # checks the server before its first run
    main = asyncio.create_task(worker.run())
    stop_task = asyncio.create_task(stop.wait())
    await asyncio.wait({main, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    await worker.drain(grace_s)
    stop_task.cancel()
    main.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await main


async def run_node(settings: Settings, host: str, port: int, grace_s: float = DEFAULT_GRACE_S) -> int:
    """API, scheduler and worker in one process, for single-node deployments; they share one tracer
    (one exporter), stopped last so it exports every span they ended. Returns the process's exit
    code: 0, or uvicorn's (3) when the API could not start."""
    stop = _stop_event()
    await check_redis(settings)
    tracing = Tracing.from_settings(settings.tracing)
    app = create_app(settings, tracing=tracing)
    server = _Server(
        uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, server_header=False)
    )
    redis = connect(settings)
    arq_pool = connect_arq(settings)
    worker = SupervisedWorker(settings, tracing=tracing)
    scheduler = build_scheduler(settings, redis, arq_pool, tracing=tracing)
    parts = {
        api := asyncio.create_task(_serve_api(server), name="api"),
        asyncio.create_task(scheduler.run_forever(), name="scheduler"),
        asyncio.create_task(worker.run(), name="worker"),
    }
    stop_task = asyncio.create_task(stop.wait(), name="signal")
    log.info("node.started", host=host, port=port)
    done, _ = await asyncio.wait({*parts, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    for task in done - {stop_task}:
        if not task.cancelled() and task.exception() is not None:
            log.error("node.part_failed", part=task.get_name(), error=repr(task.exception()))
    # Stop taking work first (API, scheduler), then let the worker finish what it holds.
    server.should_exit = True
    await scheduler.close()
    await worker.drain(grace_s)
    stop_task.cancel()
    for task in parts:
        if task.get_name() == "worker":
            task.cancel()
    results = await asyncio.gather(*parts, return_exceptions=True)
    await arq_pool.aclose()
    await redis.aclose()
    tracing.shutdown()
    failed = [r for r in results if isinstance(r, Exception)]
    log.info("node.stopped", failed_parts=len(failed))
    return 0 if api.cancelled() or api.exception() is not None else api.result()
