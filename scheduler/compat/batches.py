"""The client batch record: what a client created, what its jobs did, and the views the SDKs read.

State stored: ``validating`` (lines being turned into jobs) → ``in_progress`` | ``failed`` (the
input was invalid: ``errors``); ``in_progress`` → ``cancelling`` (the client cancelled). The status
a client sees is derived from that and the counters the job-end scripts keep (``ended_ms`` once
every line ended): ``completed``, ``cancelled``, or ``expired`` when the window passed first.
Every change is one guarded Lua step (client_batch_open.lua, client_batch_state.lua).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson
from redis.asyncio import Redis

from scheduler.compat.files import derived_id
from scheduler.errors import IllegalTransition, InvalidRequest, NotFound
from scheduler.ledger import ids, keys, scripts
from scheduler.ledger.jobs import iso

Api = Literal["openai", "anthropic"]

# completion_window: OpenAI accepts only "24h"; batchshift also takes shorter (or other) windows
# written the same way, in hours or minutes ("1h", "4h", "90m").
_WINDOW: Final = re.compile(r"^([1-9][0-9]{0,4})(h|m)$")
BATCH_ID: Final = re.compile(r"^(batch|msgbatch)_[0-9A-Z]{26}$")
# Line ids pushed per LRANGE / RPUSH.
LINES_CHUNK: Final = 1000


def window_seconds(window: object, horizon_s: float) -> int:
    """Seconds in a ``completion_window`` such as ``24h`` or ``90m``; InvalidRequest otherwise."""
    match = _WINDOW.fullmatch(window) if isinstance(window, str) else None
    if match is None:
        raise InvalidRequest(
            f"Invalid value for 'completion_window': {window!r}. Supported: '24h', or a batchshift "
            "window in hours or minutes such as '1h', '4h' or '90m'.",
            "completion_window",
        )
    seconds = int(match.group(1)) * (3600 if match.group(2) == "h" else 60)
    if seconds > horizon_s:
        raise InvalidRequest(
            f"Invalid value for 'completion_window': {window!r} is beyond the deadline horizon of "
            f"{horizon_s:g} seconds.",
            "completion_window",
        )
    return seconds


@dataclass(slots=True)
class ClientBatch:
    """A client batch as stored, decoded."""

    id: str
    api: Api
    tenant: str
    endpoint: str
    input_file_id: str
    window: str
    created_ms: int
    expires_ms: int
    state: str
    total: int
    ended: int
    succeeded: int
    failed: int
    cancelled: int
    ended_ms: int | None
    in_progress_ms: int | None
    cancelling_ms: int | None
    failed_ms: int | None
    model: str
    metadata: dict[str, str] | None
    errors: list[dict[str, Any]] | None
    callback_url: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    actual_usd: float = 0.0
    sync_equivalent_usd: float = 0.0
    wasted_usd: float = 0.0
    deleted_files: frozenset[str] = frozenset()  # "output" / "errors": deleted by the client

    @classmethod
    def from_hash(cls, batch_id: str, raw: dict[bytes, bytes]) -> ClientBatch:
        h = {k.decode(): v.decode() for k, v in raw.items()}

        def ms(name: str) -> int | None:
            value = h.get(name)
            return int(value) if value else None

        return cls(
            id=batch_id,
            api=h["api"],  # type: ignore[arg-type]
            tenant=h["tenant"],
            endpoint=h.get("endpoint", ""),
            input_file_id=h.get("input_file_id", ""),
            window=h.get("window", ""),
            created_ms=int(h["created_ms"]),
            expires_ms=int(h["expires_ms"]),
            state=h["state"],
            total=int(h.get("total") or 0),
            ended=int(h.get("ended") or 0),
            succeeded=int(h.get("succeeded") or 0),
            failed=int(h.get("failed") or 0),
            cancelled=int(h.get("cancelled") or 0),
            ended_ms=ms("ended_ms"),
            in_progress_ms=ms("in_progress_ms"),
            cancelling_ms=ms("cancelling_ms"),
            failed_ms=ms("failed_ms"),
            model=h.get("model", ""),
            metadata=orjson.loads(h["metadata"]) if h.get("metadata") else None,
            errors=orjson.loads(h["errors"]) if h.get("errors") else None,
            callback_url=h.get("callback_url") or None,
            input_tokens=int(h.get("input_tokens") or 0),
            output_tokens=int(h.get("output_tokens") or 0),
            actual_usd=float(h.get("actual_usd") or 0),
            sync_equivalent_usd=float(h.get("sync_equivalent_usd") or 0),
            wasted_usd=float(h.get("wasted_usd") or 0),
            deleted_files=frozenset(k for k in ("output", "errors") if h.get(f"deleted_{k}")),
        )

    def status(self, now_ms: int) -> str:
        """OpenAI's status, derived from the stored state, the counters and the window."""
        if self.state in ("validating", "failed"):
            return self.state
        if self.state == "cancelling":
            return "cancelled" if self.ended_ms is not None else "cancelling"
        if self.ended_ms is not None and self.ended_ms <= self.expires_ms:
            return "completed"
        return "expired" if now_ms > self.expires_ms else "in_progress"

    @property
    def live(self) -> int:
        return self.total - self.ended

    def has_output(self) -> bool:
        return self.succeeded > 0

    def has_errors(self, status: str) -> bool:
        """Errors file lines: failed and cancelled lines, and every unfinished one of an expired batch."""
        return self.failed + self.cancelled > 0 or (status == "expired" and self.live > 0)

    def openai_view(self, now_ms: int) -> dict[str, Any]:
        """OpenAI's Batch object."""
        status = self.status(now_ms)
        ended = status in ("completed", "cancelled", "expired")
        obj: dict[str, Any] = {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": self.model or None,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id,
            "completion_window": self.window,
            "status": status,
            "output_file_id": derived_id(self.id, "output") if ended and self.has_output() else None,
            "error_file_id": derived_id(self.id, "errors") if ended and self.has_errors(status) else None,
            "created_at": self.created_ms // 1000,
            "in_progress_at": _s(self.in_progress_ms),
            "expires_at": self.expires_ms // 1000,
            "finalizing_at": _s(self.ended_ms) if status == "completed" else None,
            "completed_at": _s(self.ended_ms) if status == "completed" else None,
            "failed_at": _s(self.failed_ms),
            "expired_at": self.expires_ms // 1000 if status == "expired" else None,
            "cancelling_at": _s(self.cancelling_ms),
            "cancelled_at": _s(self.ended_ms) if status == "cancelled" else None,
            "request_counts": {
                "total": self.total,
                "completed": self.succeeded,
                "failed": self.failed + self.cancelled + (self.live if status == "expired" else 0),
            },
            "metadata": self.metadata,
            "usage": {
                "input_tokens": self.input_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": self.output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.input_tokens + self.output_tokens,
            },
            "cost": self.cost(),  # a batchshift extension: the SDKs keep unknown fields
        }
        return obj

    def cost(self) -> dict[str, float]:
        """What the batch's ended lines cost, what the sync API would have, and the difference."""
        return {
            "actual_usd": round(self.actual_usd, 6),
            "sync_equivalent_usd": round(self.sync_equivalent_usd, 6),
            "saved_usd": round(self.sync_equivalent_usd - self.actual_usd, 6),
            "wasted_usd": round(self.wasted_usd, 6),
        }

    def view(self, now_ms: int, results_url: str) -> dict[str, Any]:
        """The batch as its own API shows it (``batch.completed`` webhooks carry this)."""
        return self.openai_view(now_ms) if self.api == "openai" else self.anthropic_view(now_ms, results_url)

    def anthropic_view(self, now_ms: int, results_url: str) -> dict[str, Any]:
        """Anthropic's MessageBatch object."""
        status = self.status(now_ms)
        ended = status in ("completed", "cancelled", "expired")
        expired = self.live if status == "expired" else 0
        return {
            "id": self.id,
            "type": "message_batch",
            "processing_status": "ended"
            if ended
            else ("canceling" if status == "cancelling" else "in_progress"),
            "request_counts": {
                "processing": 0 if ended else self.live,
                "succeeded": self.succeeded,
                "errored": self.failed,
                "canceled": self.cancelled,
                "expired": expired,
            },
            "ended_at": iso(self.ended_ms if status != "expired" else self.expires_ms) if ended else None,
            "created_at": iso(self.created_ms),
            "expires_at": iso(self.expires_ms),
            "archived_at": None,
            "cancel_initiated_at": iso(self.cancelling_ms),
            "results_url": results_url if ended else None,
            "cost": self.cost(),  # a batchshift extension
        }


def _kept(raw: dict[bytes, bytes]) -> bool:
    """A stored batch that was not deleted (Anthropic's ``DELETE``)."""
    return bool(raw) and b"tenant" in raw and not raw.get(b"deleted_batch")


def _newest_first(page: list[ClientBatch], walked_toward_newer: bool) -> list[ClientBatch]:
    return page[::-1] if walked_toward_newer else page


def _s(ms: int | None) -> int | None:
    return ms // 1000 if ms is not None else None


class ClientBatches:
    """Client batch records in Redis; each change one guarded script."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._open = scripts.load(redis, "client_batch_open")
        self._state = scripts.load(redis, "client_batch_state")
        self._settle = scripts.load(redis, "client_batch_settle")
        self._delete = scripts.load(redis, "client_batch_delete")

    async def open(
        self,
        batch_id: str,
        *,
        api: Api,
        tenant: str,
        endpoint: str,
        input_file_id: str,
        window: str,
        created_ms: int,
        expires_ms: int,
        metadata: dict[str, str] | None,
        total: int,
        callback_url: str | None = None,
    ) -> None:
        """Record a new batch in ``validating``; with ``callback_url``, its end sends ``batch.completed``."""
        fields: dict[str, str | int] = {
            "api": api,
            "tenant": tenant,
            "endpoint": endpoint,
            "input_file_id": input_file_id,
            "window": window,
            "created_ms": created_ms,
            "expires_ms": expires_ms,
            "total": total,
            "metadata": orjson.dumps(metadata).decode() if metadata is not None else "",
            "callback_url": callback_url or "",
        }
        kept_from = created_ms - keys.CLIENT_BATCH_TTL_S * 1000
        floors = [ids.floor_id(prefix, kept_from) for prefix in ("batch", "msgbatch")]
        args: list[str | int] = [batch_id, keys.CLIENT_BATCH_TTL_S, *floors]
        for name, value in fields.items():
            args.extend((name, value))
        await self._open(
            keys=[
                keys.client_batch(batch_id),
                keys.tenant_client_batches(tenant),
                keys.CLIENT_BATCHES_VALIDATING,
            ],
            args=args,
        )

    async def _change(
        self, batch_id: str, from_states: Sequence[str], to: str, now_ms: int, refused: int = 0, **fields: Any
    ) -> str:
        args: list[Any] = [",".join(from_states), to, now_ms, refused]
        for name, value in fields.items():
            args.extend((name, value))
        status, prior = await self._state(
            keys=[keys.client_batch(batch_id), keys.CLIENT_BATCHES_VALIDATING], args=args
        )
        if status == b"missing":
            raise NotFound(f"No batch found with id '{batch_id}'.", "batch_id")
        if status == b"refused":
            raise IllegalTransition(f"Cannot do this to a batch with status '{prior.decode()}'.")
        return str(prior.decode())

    async def add_lines(self, batch_id: str, entries: Sequence[str]) -> None:
        """Append line entries (job ids, or ``!`` + JSON for a line refused at intake), in order."""
        key = keys.client_batch_lines(batch_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            for start in range(0, len(entries), LINES_CHUNK):
                pipe.rpush(key, *entries[start : start + LINES_CHUNK])
            pipe.expire(key, keys.CLIENT_BATCH_TTL_S)
            await pipe.execute()

    async def set_lines(self, batch_id: str, entries: dict[int, str]) -> None:
        """Replace line entries by position (a listed job that admission or the enqueue refused)."""
        if not entries:
            return
        key = keys.client_batch_lines(batch_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            for index, entry in entries.items():
                pipe.lset(key, index, entry)
            await pipe.execute()

    async def abandon(self, batch_id: str, now_ms: int) -> None:
        """validating → cancelling: a create that died (the caller judged it stale)."""
        await self._change(batch_id, ("validating",), "cancelling", now_ms, cancelling_ms=now_ms)

    async def settle(self, batch_id: str, now_ms: int) -> None:
        """An abandoned batch's lines that never became jobs count as cancelled; it ends."""
        await self._settle(keys=[keys.client_batch(batch_id)], args=[now_ms])

    async def delete_file(self, batch_id: str, kind: str, now_ms: int) -> bool:
        """Delete an ended batch's output or error file (one guarded step); False when it was
        deleted before, or the batch has none yet."""
        answer = await self._delete(keys=[keys.client_batch(batch_id)], args=[kind, now_ms])
        return bool(answer == b"deleted")

    async def delete(self, batch_id: str, now_ms: int) -> None:
        """Delete an ended batch (Anthropic's ``DELETE``): it reads as missing from then on. Its
        jobs stay, under their own retention, as any job's do."""
        answer = await self._delete(keys=[keys.client_batch(batch_id)], args=["batch", now_ms])
        if answer == b"live":
            raise IllegalTransition(
                f"Message batch '{batch_id}' is still processing: cancel it first, then delete it."
            )
        if answer != b"deleted":
            raise NotFound(f"No message batch found with id '{batch_id}'.", "message_batch_id")

    async def start(self, batch_id: str, now_ms: int, *, refused: int, model: str) -> None:
        """validating → in_progress, every line now a job (or refused, counted failed)."""
        await self._change(
            batch_id, ("validating",), "in_progress", now_ms, refused, in_progress_ms=now_ms, model=model
        )

    async def fail(self, batch_id: str, now_ms: int, errors: list[dict[str, Any]]) -> None:
        """validating → failed: the input was invalid; no job was made."""
        await self._change(
            batch_id, ("validating",), "failed", now_ms, failed_ms=now_ms, errors=orjson.dumps(errors)
        )

    async def request_cancel(self, batch_id: str, now_ms: int) -> None:
        """in_progress → cancelling (its live jobs are cancelled next)."""
        await self._change(batch_id, ("in_progress",), "cancelling", now_ms, cancelling_ms=now_ms)

    async def get(self, tenant: str, batch_id: str) -> ClientBatch | None:
        """The tenant's batch, or None (also another tenant's, or one of the other API)."""
        batch = await self.find(batch_id)
        return batch if batch is not None and batch.tenant == tenant else None

    async def find(self, batch_id: str) -> ClientBatch | None:
        """The batch of any tenant (for the scheduler's own passes), or None."""
        if not BATCH_ID.fullmatch(batch_id):
            return None
        raw: dict[bytes, bytes] = await self.redis.hgetall(keys.client_batch(batch_id))  # type: ignore[misc]
        return ClientBatch.from_hash(batch_id, raw) if _kept(raw) else None

    async def state_of(self, batch_id: str) -> str | None:
        """The stored state alone (``validating``, ``in_progress``, ...), or None without a record."""
        state: bytes | None = await self.redis.hget(keys.client_batch(batch_id), "state")  # type: ignore[misc]
        return state.decode() if state is not None else None

    async def validating_before(self, cutoff_ms: int, limit: int) -> list[str]:
        """Ids of batches still ``validating`` that were created before ``cutoff_ms``, oldest first."""
        found = await self.redis.zrangebyscore(
            keys.CLIENT_BATCHES_VALIDATING, "-inf", f"({cutoff_ms}", start=0, num=limit
        )
        return [raw.decode() for raw in found]

    async def unlist_validating(self, batch_id: str) -> None:
        """Drop an index entry whose batch is gone (its record expired) or has moved on."""
        await self.redis.zrem(keys.CLIENT_BATCHES_VALIDATING, batch_id)

    async def page(
        self, tenant: str, api: Api, *, after: str | None, limit: int, before: str | None = None
    ) -> tuple[list[ClientBatch], bool]:
        """The tenant's batches of one API, newest first: the ``limit`` older than ``after`` (or the
        newest), or with ``before`` (Anthropic's ``before_id``) the ``limit`` just newer than it;
        and whether more follow in that direction."""
        index = keys.tenant_client_batches(tenant)
        prefix = "batch_" if api == "openai" else "msgbatch_"
        toward_newer = before is not None
        bound: bytes | str = f"({before}" if toward_newer else (f"({after}" if after else "+")
        page: list[ClientBatch] = []
        while True:
            if toward_newer:
                batch_ids = await self.redis.zrangebylex(index, bound, "+", start=0, num=limit + 1)
            else:
                batch_ids = await self.redis.zrevrangebylex(index, bound, "-", start=0, num=limit + 1)
            if not batch_ids:
                return _newest_first(page, toward_newer), False
            async with self.redis.pipeline(transaction=False) as pipe:
                for raw_id in batch_ids:
                    pipe.hgetall(keys.client_batch(raw_id.decode()))
                rows = await pipe.execute()
            for raw_id, row in zip(batch_ids, rows, strict=True):
                bound = b"(" + raw_id
                batch_id = raw_id.decode()
                if not _kept(row) or not batch_id.startswith(prefix):
                    continue
                if len(page) == limit:
                    return _newest_first(page, toward_newer), True
                page.append(ClientBatch.from_hash(batch_id, row))
            if len(batch_ids) < limit + 1:
                return _newest_first(page, toward_newer), False

    async def line_entries(self, batch_id: str, start: int, count: int) -> list[str]:
        """Line entries ``start`` to ``start + count - 1`` in input order."""
        raw = await self.redis.lrange(keys.client_batch_lines(batch_id), start, start + count - 1)  # type: ignore[misc]
        return [entry.decode() for entry in raw]
