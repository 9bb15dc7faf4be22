"""The API's app factory: one Redis client and one Ledger per process, built in the lifespan.

Routers register here, one ``include_router`` line each; POST /v1/jobs is answered by a middleware
ahead of routing (api/enqueue_path.py), its route declared in api/jobs.py as the others. State other code may read:
``app.state.settings``, ``app.state.redis``, ``app.state.ledger``, ``app.state.enqueues`` (single
enqueues grouped into one Redis round trip), ``app.state.batch_intake`` (the compatible batch
endpoints'), ``app.state.watcher`` and
``app.state.tracing`` (config/tracing.py; the no-op until the lifespan starts).
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from redis.asyncio import Redis

from api import (
    anthropic_batches,
    console,
    costs,
    health,
    jobs,
    lanes,
    openai_batches,
    provider_webhooks,
    webhooks,
)
from api.enqueue_path import EnqueueFastPath
from api.errors import install_error_handlers
from api.request_id import RequestIdMiddleware
from api.responses import JsonResponse
from api.schemas import document
from api.watcher import JobWatcher
from config.settings import Settings
from config.tracing import OFF, Tracing
from scheduler.compat.intake import BatchIntake
from scheduler.ledger.group_enqueue import GroupEnqueue
from scheduler.ledger.ledger import Ledger
from scheduler.ledger.store import check_server, connect

_heap_frozen = False


def freeze_startup_heap() -> None:
    """Once per process, at the first app's startup: collect, then move what is alive (modules,
    settings, the app) out of the collector's reach for good. A full collection then no longer walks
    it: a bulk request's parse makes enough objects to trigger full collections, and they were most of
    its orjson.loads time. Collected first and only once, so no garbage (a test's, an earlier app's) is
    frozen along, never to be freed."""
    global _heap_frozen
    if _heap_frozen:
        return
    _heap_frozen = True
    gc.collect()
    gc.freeze()


def create_app(settings: Settings, *, redis: Redis | None = None, tracing: Tracing | None = None) -> FastAPI:
    """Build the API. Pass ``redis`` (or ``tracing``) to share one (tests, ``batchshift run``); it is then
    not closed."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = redis or connect(settings)
        if redis is None:
            await check_server(client)
        app.state.redis = client
        app.state.ledger = Ledger.for_settings(client, settings)
        app.state.batch_intake = BatchIntake(settings, client, app.state.ledger)
        app.state.enqueues = GroupEnqueue(app.state.ledger)
        app.state.watcher = JobWatcher(client, wait_s=settings.redis.socket_timeout_s / 2)
        app.state.tracing = tracing or Tracing.from_settings(settings.tracing)
        if redis is None:  # a process of its own (tests share a client and collect as usual)
            freeze_startup_heap()
        try:
            yield
        finally:
            await app.state.enqueues.close()
            await app.state.watcher.close()
            if tracing is None:
                app.state.tracing.shutdown()
            if redis is None:
                await client.aclose()

    app = FastAPI(
        title="batchshift",
        summary="Latency-tolerant LLM jobs, sent to provider batch APIs at about half price.",
        version="0.1.0",
        lifespan=lifespan,
        default_response_class=JsonResponse,
        # Traces come from our own tracing (BATCHSHIFT_TRACING, the job's spans across processes);
        # FastAPI's native OpenTelemetry looked up the global providers on every request, for nothing.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.tracing = OFF
    install_error_handlers(app)
    app.add_middleware(EnqueueFastPath)  # POST /v1/jobs without routing; inside the request id
    app.add_middleware(RequestIdMiddleware, access_log=settings.log_access)
    app.include_router(health.router)
    app.include_router(costs.router)
    app.include_router(jobs.router)
    app.include_router(lanes.router)
    app.include_router(webhooks.router)
    app.include_router(provider_webhooks.router)
    app.include_router(openai_batches.router)
    app.include_router(anthropic_batches.router)
    app.include_router(console.router)
    document(app)
    return app
