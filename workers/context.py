"""What every arq task receives as ``ctx``: the process's shared resources, built once at startup.

arq adds its per-job keys (``job_id``, ``job_try``, ``enqueue_time``, ``score``) to the dict it
passes; ours are built by :func:`workers.worker.startup` and closed by :func:`workers.worker.shutdown`.
``hooks`` lets a test inject a fault at a named point in a task (e.g. ``after_create``, called
right after the provider accepted a batch and before its id is recorded); production has none.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, NotRequired, TypedDict

import httpx
from arq.connections import ArqRedis

from config.settings import Settings
from config.tracing import OFF, Tracing
from scheduler.ledger.clock import Clock
from scheduler.ledger.ledger import Ledger
from workers.providers.base import ProviderAdapter
from workers.webhook_http import WebhookClient

# A test hook: called with keyword arguments describing the point it interrupts.
Hook = Callable[..., Awaitable[None] | None]


class WorkerContext(TypedDict):
    """The arq ``ctx`` every task, test hook, startup and shutdown receives: its one typing."""

    redis: ArqRedis  # arq's pool: the tasks' Redis, and where they enqueue follow-up tasks
    settings: Settings
    ledger: Ledger
    http: httpx.AsyncClient  # the one HTTP client of this process
    webhook_http: WebhookClient  # webhooks only: SSRF-guarded, no redirects (workers/webhooks.py)
    adapters: dict[str, ProviderAdapter]  # configured provider name -> its adapter
    hooks: dict[str, Hook]  # fault injection points for tests; empty in production
    clock: Clock  # every task's "now": Redis TIME in production, a test's virtual clock in tests
    tracing: NotRequired[Tracing]  # the process's tracer (config/tracing.py); the no-op when tracing is off
    tracing_owned: NotRequired[bool]  # startup built it, so shutdown flushes and stops it
    # Set by arq for each job:
    job_id: NotRequired[str]
    job_try: NotRequired[int]
    enqueue_time: NotRequired[datetime]
    score: NotRequired[int]


async def call_hook(ctx: WorkerContext, name: str, **info: Any) -> None:
    """Run the test hook ``name`` if one is installed (it may raise to simulate a crash there)."""
    hook = ctx["hooks"].get(name)
    if hook is None:
        return
    outcome = hook(**info)
    if isinstance(outcome, Awaitable):
        await outcome


def tracing_of(ctx: WorkerContext) -> Tracing:
    """The process's tracer; the no-op for a ctx built without startup (tests, benchmarks)."""
    return ctx.get("tracing", OFF)
