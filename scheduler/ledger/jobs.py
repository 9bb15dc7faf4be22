"""What a job is: its states, its stored record, and the view the API and webhooks show."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

import orjson

JobState = Literal["queued", "batched", "sync", "succeeded", "failed", "cancelled"]
Route = Literal["batch", "flex", "sync"]

STATES: Final = ("queued", "batched", "sync", "succeeded", "failed", "cancelled")
TERMINAL: Final = frozenset({"succeeded", "failed", "cancelled"})
LIVE: Final = frozenset({"queued", "batched", "sync"})


def lane_name(provider: str, model: str, endpoint: str) -> str:
    """A lane's name as the job view shows it and ``BATCHSHIFT_LANES`` keys it."""
    return f"{provider}:{model}:{endpoint}"


# Epoch ms below this (2**32 s, in 2106) take iso's fast path: up to there ms / 1000 as a float is
# within a quarter of a microsecond of the exact value, so fromtimestamp rounds to the exact ms.
_ISO_FAST_END: Final = 2**32 * 1000


@functools.lru_cache(maxsize=1024)
def _iso_second(seconds: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` of an epoch second (jobs of one run share a handful of them)."""
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat()[:19]


def iso(ms: int | None) -> str | None:
    """Epoch milliseconds as RFC 3339 UTC, or None.

    What ``datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()`` writes (with ``Z`` for ``+00:00``):
    the fraction as microseconds, left out when zero. An int in range is written from its cached
    second and its own milliseconds (a job view writes three of these, a webhook body four)."""
    if ms is None:
        return None
    if type(ms) is int and 0 <= ms < _ISO_FAST_END:
        frac = ms % 1000
        return _iso_second(ms // 1000) + (f".{frac:03d}000Z" if frac else "Z")
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


@dataclass(slots=True)
class NewJob:
    """A validated job, ready for the enqueue script."""

    id: str
    tenant: str
    provider: str
    endpoint: str
    model: str
    body: bytes
    deadline_ms: int
    created_ms: int
    callback_url: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    idempotency_key: str | None = None
    request_hash: str = ""
    prefix: str = ""  # the prompt prefix group (scheduler/planning/prefixes.py); "" for none
    state: Literal["queued", "sync"] = "queued"
    # Set by budget admission for a tenant with a `reject` envelope: the envelope enqueue keeps
    # spend + committed under, and this job's expected cost, reserved until it ends.
    envelope_usd: float | None = None
    reserve_usd: float = 0.0
    # W3C trace context of the job's intake span (config/tracing.py); empty when tracing is off.
    traceparent: str = ""
    tracestate: str = ""
    # Deduplication (scheduler/ledger/dedup.py), when the tenant opted this job in: the digest naming
    # its group of identical requests, the group's window and who pays for the shared call.
    dedup_digest: str = ""
    dedup_window_ms: int = 0
    dedup_max_followers: int = 0
    dedup_cost: str = ""
    # A line of a client's batch (/v1/batches, /v1/messages/batches): the batch it counts towards
    # when it ends (lib/client_batch.lua) and the client's id for the line.
    client_batch: str = ""
    custom_id: str = ""

    @property
    def lane(self) -> str:
        return lane_name(self.provider, self.model, self.endpoint)

    def fields(self) -> dict[str, str | int | bytes]:
        """The job hash's fields at enqueue (trace context only when there is one: no empty fields)."""
        fields: dict[str, str | int | bytes] = {
            "id": self.id,
            "tenant": self.tenant,
            "provider": self.provider,
            "endpoint": self.endpoint,
            "model": self.model,
            "lane": self.lane,
            "state": self.state,
            "route": "sync" if self.state == "sync" else "",
            "deadline_ms": self.deadline_ms,
            "created_ms": self.created_ms,
            "body": self.body,
            "size": len(self.body),
            "callback_url": self.callback_url or "",
            "tags": orjson.dumps(self.tags),
            "feature": self.tags.get("feature", ""),
            "idempotency_key": self.idempotency_key or "",
            "attempts": 0,
            "batch_id": "",
            "prefix": self.prefix,
        }
        if self.dedup_digest:
            fields["dedup_digest"] = self.dedup_digest
            fields["dedup_cost"] = self.dedup_cost
        if self.client_batch:
            fields["client_batch"] = self.client_batch
            fields["custom_id"] = self.custom_id
        if self.traceparent:
            fields["traceparent"] = self.traceparent
            if self.tracestate:
                fields["tracestate"] = self.tracestate
        return fields


# The hash fields :meth:`JobRecord.view` shows (plus tenant and feature, which listings filter on):
# a listing reads only these, never the request body.
VIEW_FIELDS: Final = (
    "id",
    "tenant",
    "provider",
    "endpoint",
    "model",
    "lane",
    "state",
    "route",
    "deadline_ms",
    "created_ms",
    "completed_ms",
    "callback_url",
    "tags",
    "feature",
    "attempts",
    "usage",
    "cost",
    "error",
    "dedup_of",
)


@dataclass(slots=True)
class JobRecord:
    """A job as stored in its Redis hash, decoded."""

    id: str
    tenant: str
    provider: str
    endpoint: str
    model: str
    lane: str
    state: JobState
    route: Route | None
    deadline_ms: int
    created_ms: int
    completed_ms: int | None
    body: bytes
    size: int
    callback_url: str | None
    tags: dict[str, str]
    attempts: int
    batch_id: str | None
    usage: dict[str, Any] | None
    cost: dict[str, Any] | None
    error: dict[str, Any] | None
    raw: dict[str, bytes]
    traceparent: str | None = None  # the intake span's W3C context, which later spans continue
    tracestate: str | None = None
    dedup_of: str | None = None  # the job whose provider call this one shares (deduplication)

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes]) -> JobRecord:
        """Decode a job hash as HGETALL returns it (bytes keys and values)."""
        h = {k.decode(): v for k, v in raw.items()}

        def s(name: str) -> str:
            return h.get(name, b"").decode()

        def opt_json(name: str) -> Any:
            value = h.get(name)
            return orjson.loads(value) if value else None

        completed = s("completed_ms")
        return cls(
            id=s("id"),
            tenant=s("tenant"),
            provider=s("provider"),
            endpoint=s("endpoint"),
            model=s("model"),
            lane=s("lane"),
            state=s("state"),  # type: ignore[arg-type]
            route=s("route") or None,  # type: ignore[arg-type]
            deadline_ms=int(s("deadline_ms")),
            created_ms=int(s("created_ms")),
            completed_ms=int(completed) if completed else None,
            body=h.get("body", b""),
            size=int(s("size") or 0),
            callback_url=s("callback_url") or None,
            tags=opt_json("tags") or {},
            attempts=int(s("attempts") or 0),
            batch_id=s("batch_id") or None,
            usage=opt_json("usage"),
            cost=opt_json("cost"),
            error=opt_json("error"),
            raw=h,
            traceparent=s("traceparent") or None,
            tracestate=s("tracestate") or None,
            dedup_of=s("dedup_of") or None,
        )

    @classmethod
    def from_view_fields(cls, values: list[bytes | None]) -> JobRecord | None:
        """Decode an HMGET of :data:`VIEW_FIELDS`; None when the record is gone."""
        raw = {
            name.encode(): value for name, value in zip(VIEW_FIELDS, values, strict=True) if value is not None
        }
        return cls.from_hash(raw) if b"state" in raw else None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def view(self, result: bytes | None = None) -> dict[str, Any]:
        """The job as the API and completion webhooks show it."""
        return _view(
            self.id,
            self.state,
            self.route,
            self.provider,
            self.endpoint,
            self.model,
            self.lane,
            self.deadline_ms,
            self.created_ms,
            self.completed_ms,
            self.tags,
            self.callback_url,
            self.attempts,
            result,
            self.error,
            self.usage,
            self.cost,
            self.dedup_of,
        )


def _view(
    id_: str,
    state: str,
    route: str | None,
    provider: str,
    endpoint: str,
    model: str,
    lane: str,
    deadline_ms: int,
    created_ms: int,
    completed_ms: int | None,
    tags: dict[str, str],
    callback_url: str | None,
    attempts: int,
    result: bytes | None,
    error: dict[str, Any] | None,
    usage: dict[str, Any] | None,
    cost: dict[str, Any] | None,
    dedup_of: str | None,
) -> dict[str, Any]:
    """The view's one layout, for :meth:`JobRecord.view` and :func:`view_of_fields`."""
    return {
        "id": id_,
        "status": state,
        "route": route,
        "provider": provider,
        "endpoint": endpoint,
        "model": model,
        "lane": lane,
        "deadline": iso(deadline_ms),
        "created_at": iso(created_ms),
        "completed_at": iso(completed_ms),
        "tags": tags,
        "callback_url": callback_url,
        "attempts": attempts,
        "result": orjson.loads(result) if result else None,
        "error": error,
        "usage": usage,
        "cost": cost,
        "deduplicated_with": dedup_of,
    }


def view_of_fields(values: Sequence[bytes | None], result: bytes | None = None) -> dict[str, Any]:
    """The view of a job read as an HMGET of :data:`VIEW_FIELDS` (in that order, the record there):
    what ``JobRecord.from_view_fields(values).view(result)`` returns, decoding only what the view
    shows (a completion webhook builds one per delivery). Values after the view's fields are ignored."""
    (
        id_,
        _tenant,
        provider,
        endpoint,
        model,
        lane,
        state,
        route,
        deadline_ms,
        created_ms,
        completed_ms,
        callback_url,
        tags,
        _feature,
        attempts,
        usage,
        cost,
        error,
        dedup_of,
    ) = values[: len(VIEW_FIELDS)]
    return _view(
        id_.decode() if id_ else "",
        state.decode() if state else "",
        route.decode() if route else None,
        provider.decode() if provider else "",
        endpoint.decode() if endpoint else "",
        model.decode() if model else "",
        lane.decode() if lane else "",
        int((deadline_ms or b"").decode()),
        int((created_ms or b"").decode()),
        int(completed_ms) if completed_ms else None,
        (orjson.loads(tags) if tags else None) or {},
        callback_url.decode() if callback_url else None,
        int(attempts) if attempts else 0,
        result,
        orjson.loads(error) if error else None,
        orjson.loads(usage) if usage else None,
        orjson.loads(cost) if cost else None,
        dedup_of.decode() if dedup_of else None,
    )
