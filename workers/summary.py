"""The log context of an arq task's lines, and the one summary event each task run logs.

:func:`summarised` wraps a task. Its lines carry ``task`` (the registered name) and, under a
worker, ``task_id`` (arq's id of this run) through structlog's contextvars; the task binds its own
ids (``job_id``, ``batch_id``, ``lane``, ``provider``) with ``structlog.contextvars`` as it learns
them, so no logger is passed around. When the run ends, one ``task.finished`` event says how
(``outcome``: the member it returned, ``done`` with its ``counts``, ``retry`` or ``error``) and how
long it took (``duration_s``); :func:`note` adds what the outcome alone does not say. On the way
out the context is put back as it was: arq runs every task in an asyncio task of its own, but
tests, benchmarks and the demo call tasks one after another in one, and a run's ids must not
reach the next run's lines.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import Any, Concatenate, ParamSpec, TypeVar

import structlog
from arq import Retry

from workers.context import WorkerContext

log = structlog.get_logger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
Task = Callable[Concatenate[WorkerContext, P], Awaitable[R]]

# The running task's extra summary fields; None outside a task.
_notes: ContextVar[dict[str, Any] | None] = ContextVar("batchshift_task_notes", default=None)


def note(**fields: Any) -> None:
    """Add ``fields`` to the running task's ``task.finished`` event (outside a task, nothing)."""
    notes = _notes.get()
    if notes is not None:
        notes.update(fields)


def summarised(name: str) -> Callable[[Task[P, R]], Task[P, R]]:
    """Run the task under its own log context and log its ``task.finished`` event."""

    def wrap(task: Task[P, R]) -> Task[P, R]:
        @functools.wraps(task)
        async def run(ctx: WorkerContext, /, *args: P.args, **kwargs: P.kwargs) -> R:
            saved = structlog.contextvars.get_contextvars()
            notes: dict[str, Any] = {}
            token = _notes.set(notes)
            structlog.contextvars.bind_contextvars(task=name)
            if "job_id" in ctx:  # arq's id of this run (our own job ids are bound as ``job_id``)
                structlog.contextvars.bind_contextvars(task_id=ctx["job_id"])
            started = time.perf_counter()

            def finished(emit: Callable[..., Any], **fields: Any) -> None:
                emit("task.finished", duration_s=round(time.perf_counter() - started, 3), **fields, **notes)

            try:
                result = await task(ctx, *args, **kwargs)
            except Retry as exc:
                defer_ms = getattr(exc, "defer_score", None)
                finished(log.info, outcome="retry", defer_s=defer_ms / 1000 if defer_ms else None)
                raise
            except asyncio.CancelledError:  # arq's timeout, or the worker shutting down
                finished(log.warning, outcome="cancelled")
                raise
            except Exception as exc:  # arq logs the traceback; the summary names the error only
                finished(log.warning, outcome="error", error=type(exc).__name__)
                raise
            else:
                if isinstance(result, Mapping):
                    finished(log.info, outcome="done", counts=dict(result))
                else:
                    finished(log.info, outcome=str(result))
                return result
            finally:
                _notes.reset(token)
                structlog.contextvars.clear_contextvars()
                structlog.contextvars.bind_contextvars(**saved)

        return run

    return wrap
