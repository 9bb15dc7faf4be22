"""The arq task names: the one list the scheduler enqueues by and the worker registers by.

The scheduler never imports ``workers``; it hands work over by name through Redis. Every name
here must be registered on the worker (``tests/test_task_registry.py`` checks it). Task ids are
deterministic (``submit:{batch_id}:{attempt}``, ``poll:{batch_id}:{due_ms}``, ``ingest:{batch_id}``)
so a tick or a task that runs twice enqueues nothing twice: arq refuses an id while its job or
result key exists.

Task arguments and results travel as msgpack (:func:`serialize`, :func:`deserialize`), never
pickle: whoever can write to Redis must not be able to run code in a worker. Every arq pool that
enqueues and every worker use them (:func:`create_pool`, ``workers.worker.worker_settings``). A
task's exception travels as its class name and message and comes back as :class:`TaskFailed`.
"""

from __future__ import annotations

from typing import Any, Final

import arq
import msgspec
from arq.connections import ArqRedis, RedisSettings

from scheduler.errors import TaskFailed

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


# -- serialization ----------------------------------------------------------------------------

# The key marking an encoded exception (or another object msgpack cannot hold) in a task's result.
_FOREIGN = "__foreign__"


def _encode_foreign(obj: Any) -> Any:
    """What msgpack cannot hold: an exception as its class and message, anything else as its class only."""
    if isinstance(obj, TaskFailed):
        return {_FOREIGN: obj.error_type, "message": obj.message}
    if isinstance(obj, BaseException):
        return {_FOREIGN: type(obj).__name__, "message": str(obj)}
    return {_FOREIGN: type(obj).__name__, "message": "a result msgpack cannot hold"}


_encoder = msgspec.msgpack.Encoder(enc_hook=_encode_foreign)
_decoder = msgspec.msgpack.Decoder()


def serialize(data: dict[str, Any]) -> bytes:
    """arq's ``job_serializer``: a job or a result record as msgpack."""
    return _encoder.encode(data)


def deserialize(raw: bytes) -> dict[str, Any]:
    """arq's ``job_deserializer``: msgpack back to the record; an encoded exception becomes TaskFailed."""
    data: dict[str, Any] = _decoder.decode(raw)
    result = data.get("r")
    if isinstance(result, dict) and _FOREIGN in result:
        data["r"] = TaskFailed(str(result[_FOREIGN]), str(result.get("message", "")))
    return data


def redis_settings(url: str) -> RedisSettings:
    """arq's connection settings from a Redis URL: ``rediss://`` turns TLS on; user and password pass through."""
    return RedisSettings.from_dsn(url)


async def create_pool(url: str) -> ArqRedis:
    """An arq pool that enqueues with :func:`serialize` (every pool that enqueues must be made here)."""
    return await arq.create_pool(redis_settings(url), job_serializer=serialize, job_deserializer=deserialize)
