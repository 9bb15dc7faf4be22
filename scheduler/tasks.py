"""The arq task names: the one list the scheduler enqueues by and the worker registers by.

The scheduler never imports ``workers``; it hands work over by name through Redis. Every name
here must be registered on the worker (``tests/test_task_registry.py`` checks it). Task ids are
deterministic (``submit:{batch_id}:{attempt}``, ``poll:{batch_id}:{due_ms}``, ``ingest:{batch_id}``)
so a tick or a task that runs twice enqueues nothing twice: arq refuses an id while its job or
result key exists.
"""

from __future__ import annotations

from typing import Any, Final

from arq.connections import ArqRedis

SUBMIT_BATCH: Final = "submit_batch"  # (batch_id): create the provider batch of a planned batch
POLL_BATCH: Final = "poll_batch"  # (batch_id): poll a batch in flight once, reschedule the next poll
INGEST_BATCH: Final = "ingest_batch"  # (batch_id): stream an ended batch's results into the ledger
CANCEL_BATCH: Final = "cancel_batch"  # (batch_id): ask the provider to cancel (all its jobs flipped)
RECONCILE_BATCHES: Final = "reconcile_batches"  # (): adopt or resubmit stale planned batches
RUN_SYNC: Final = "run_sync"  # (job_id): send one job to the provider's synchronous API
DELIVER_WEBHOOKS: Final = "deliver_webhooks"  # (): claim and send due webhook deliveries
SEND_ALERTS: Final = "send_alerts"  # (): claim and send due alert notifications

ALL: Final = (
    SUBMIT_BATCH,
    POLL_BATCH,
    INGEST_BATCH,
    CANCEL_BATCH,
    RECONCILE_BATCHES,
    RUN_SYNC,
    DELIVER_WEBHOOKS,
    SEND_ALERTS,
)


def submit_job_id(batch_id: str, attempt: int) -> str:
    """The arq id of a batch's ``attempt``-th submission."""
    return f"submit:{batch_id}:{attempt}"


def poll_job_id(batch_id: str, due_ms: int) -> str:
    """The arq id of the poll due at ``due_ms``; a lost poll is re-enqueued because its due time stays."""
    return f"poll:{batch_id}:{due_ms}"


def ingest_job_id(batch_id: str) -> str:
    """The arq id of a batch's ingestion (one per batch)."""
    return f"ingest:{batch_id}"


def cancel_job_id(batch_id: str) -> str:
    """The arq id of a batch's cancellation (one per batch)."""
    return f"cancel:{batch_id}"


async def enqueue(pool: ArqRedis, name: str, *args: Any, job_id: str, defer_s: float | None = None) -> bool:
    """Enqueue task ``name`` under the deterministic ``job_id``; False when that id is already taken.

    Raises:
        ValueError: ``name`` is not one of :data:`ALL` (a typo would otherwise sit in the queue forever).
    """
    if name not in ALL:
        raise ValueError(f"unknown task name {name!r}; known: {', '.join(ALL)}")
    job = await pool.enqueue_job(name, *args, _job_id=job_id, _defer_by=defer_s)
    return job is not None
