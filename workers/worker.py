"""The arq worker: which tasks it runs (registered by name), and the ``ctx`` it builds for them.

:data:`FUNCTIONS` is the one registry: each task is added with one line, under the name
:mod:`scheduler.ledger.tasks` gives it, and a test checks every name the scheduler enqueues is here.
``job_timeout`` is short (settings.worker.job_timeout_s) because arq only re-runs a dead worker's
task once that timeout has passed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any, cast

import structlog
from arq.worker import Function, Worker, func

from config.settings import HttpSettings, Settings
from config.tracing import Tracing
from scheduler.ledger import tasks
from scheduler.ledger.clock import Clock, ServerClock
from scheduler.ledger.ledger import Ledger
from scheduler.ledger.store import connect_arq
from workers import alerts, providers, webhooks
from workers.context import Hook, WorkerContext
from workers.http import build_client
from workers.tasks import batches, ingest, sync

log = structlog.get_logger(__name__)


def task(coroutine: Callable[..., Awaitable[Any]], name: str, **options: Any) -> Function:
    """Register ``coroutine`` under task ``name`` (arq types ctx as a plain dict; ours is
    :class:`~workers.context.WorkerContext`, the one typing every task and hook uses)."""
    return func(cast(Any, coroutine), name=name, **options)


# Every task the worker runs, registered explicitly under its scheduler.ledger.tasks name; one line each.
# Polls keep no result: a poll that died must be enqueueable again under the same id next tick.
FUNCTIONS: list[Function] = [
    task(batches.submit_batch, tasks.SUBMIT_BATCH),
    task(batches.poll_batch, tasks.POLL_BATCH, keep_result=0),
    task(batches.cancel_batch, tasks.CANCEL_BATCH),
    task(batches.reconcile_batches, tasks.RECONCILE_BATCHES, keep_result=0),
    task(ingest.ingest_batch, tasks.INGEST_BATCH, keep_result=0),  # a later poll may hand it over again
    task(sync.run_sync, tasks.RUN_SYNC),
    task(webhooks.deliver_webhooks, tasks.DELIVER_WEBHOOKS, keep_result=0),
    task(alerts.send_alerts, tasks.SEND_ALERTS, keep_result=0),
]


async def startup(ctx: WorkerContext) -> None:
    """Build the shared resources: ledger, the one HTTP client, one adapter per configured provider.

    arq hands over the ``ctx`` of :func:`worker_settings` (settings, hooks) and its pool as ``redis``;
    the rest of :class:`~workers.context.WorkerContext` is filled in here.
    """
    settings = ctx["settings"]
    ctx.setdefault("hooks", {})
    ctx.setdefault("clock", ServerClock(ctx["redis"]))
    if "tracing" not in ctx:
        ctx["tracing"] = Tracing.from_settings(settings.tracing)
        ctx["tracing_owned"] = True
    ctx["ledger"] = Ledger.for_settings(ctx["redis"], settings, clock=ctx["clock"])
    client = build_client(_http_settings(settings))
    ctx["http"] = client
    ctx["webhook_http"] = webhooks.build_client(settings)
    ctx["adapters"] = {
        name: providers.make_adapter(name, provider, client) for name, provider in settings.providers.items()
    }
    log.info("worker.started", providers=sorted(settings.providers))


async def shutdown(ctx: WorkerContext) -> None:
    """Close what startup opened (a startup that failed midway opened only some of it)."""
    for client in (ctx.get("http"), ctx.get("webhook_http")):
        if client is not None:
            await client.aclose()
    tracing = ctx.get("tracing")
    if tracing is not None and ctx.get("tracing_owned"):
        tracing.shutdown()  # exports the spans still buffered
    log.info("worker.stopped")


def _http_settings(settings: Settings) -> HttpSettings:
    """The HTTP timeouts of the process's client: the slowest configured provider's, so none is cut short."""
    configured = [p.http for p in settings.providers.values()]
    if not configured:
        return HttpSettings()
    return max(configured, key=lambda h: h.read_timeout)


# Seconds run_sync's arq timeout allows past its calls' own timeouts (limits, Redis, the finish).
SYNC_TASK_MARGIN_S = 60.0


def functions(settings: Settings) -> list[Function]:
    """The registry with run_sync's timeout fitted to its calls: a flex try and a standard one may
    take ``flex_latency_s + sync_timeout_s``, longer than the short ``job_timeout_s``."""
    flex = max((p.flex_latency_s for p in settings.providers.values() if p.flex), default=0.0)
    sync_s = flex + settings.worker.sync_timeout_s + SYNC_TASK_MARGIN_S
    return [
        dataclasses.replace(f, timeout_s=max(sync_s, settings.worker.job_timeout_s))
        if f.name == tasks.RUN_SYNC
        else f
        for f in FUNCTIONS
    ]


def worker_settings(
    settings: Settings,
    *,
    hooks: dict[str, Hook] | None = None,
    clock: Clock | None = None,
    tracing: Tracing | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``arq.worker.Worker`` built from settings (tests add ``burst=True``);
    ``clock`` is the tasks' "now" (default: the Redis server's clock), ``tracing`` a tracer shared
    with the caller (default: one built from settings, stopped with the worker)."""
    return {
        "functions": functions(settings),
        "redis_settings": tasks.redis_settings(settings.redis_url),
        "redis_pool": connect_arq(settings),  # arq's own pool would have no socket timeout
        # msgpack, never pickle: task arguments in Redis must not be able to run code here.
        "job_serializer": tasks.serialize,
        "job_deserializer": tasks.deserialize,
        "on_startup": startup,
        "on_shutdown": shutdown,
        "ctx": {"settings": settings, "hooks": dict(hooks or {})}
        | ({"clock": clock} if clock else {})
        | ({"tracing": tracing} if tracing else {}),
        "job_timeout": settings.worker.job_timeout_s,
        "max_jobs": settings.worker.max_jobs,
    }


async def run_burst(
    settings: Settings, *, hooks: dict[str, Hook] | None = None, clock: Clock | None = None
) -> Worker:
    """Run a worker until the queue is empty, then close it; returns it for its counters (tests, demo)."""
    worker = Worker(
        **worker_settings(settings, hooks=hooks, clock=clock), burst=True, poll_delay=0, handle_signals=False
    )
    try:
        await worker.main()
    finally:
        await close_worker(worker)
    return worker


async def close_worker(worker: Worker) -> None:
    """Close an arq worker: its tasks, on_shutdown, its pool.

    arq 0.28 closes its pool with redis-py's deprecated ``close()``; this worker's pool answers that
    call with ``aclose()`` instead. (Silencing the warning with ``warnings.catch_warnings`` around the
    await was not safe: workers closing concurrently restored each other's filters out of order.)
    """
    pool = worker._pool  # None once closed, or if the worker never started
    if pool is not None:
        pool.close = pool.aclose
    await worker.close()
