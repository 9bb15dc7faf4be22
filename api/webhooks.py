"""Webhook delivery routes: ``GET /v1/webhooks/deliveries`` and ``POST /v1/webhooks/replay``.

A tenant sees and replays only its own deliveries. A delivery is one event of one job
(``wh_<job_id>``, event id ``msg_<job_id>``); its status is ``pending`` (not tried yet), ``failing``
(a retry is scheduled), ``delivered``, ``dead`` (dead-lettered after the last attempt, or refused)
or ``disabled`` (its receiver answered 410). ``?status=failed`` lists the failing, dead and disabled
ones. Replay sends dead-lettered (dead or disabled) deliveries again under their unchanged
``webhook-id``, by ids or every one that died since a time; it also lifts the 410 mark on their
URLs, since asking for a replay says the receiver is back.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from redis.asyncio import Redis

from api.auth import tenant
from api.body import read_json
from api.responses import JsonResponse
from api.schemas import ReplayRequest, request_body
from scheduler.errors import InvalidRequest
from scheduler.ledger import keys, scripts
from scheduler.ledger.jobs import iso
from scheduler.planning.webhook_dispatch import url_hash

router = APIRouter(tags=["webhooks"])

STATUSES = ("pending", "failing", "delivered", "dead", "disabled")
FAILED = frozenset({"failing", "dead", "disabled"})
MAX_REPLAY_IDS = 1000
MAX_REPLAY_SINCE = 10_000  # deliveries one "since" replay moves; call again for more
REPLAY_BODY_LIMIT = 256 * 1024
SCAN_SLICE = 200
# The furthest a cursor (an offset into the tenant's delivery index) may point: Redis takes range
# offsets as signed 64-bit, and offset + SCAN_SLICE must still fit; 2**53 is far past any index.
MAX_CURSOR = 2**53


def view(h: dict[str, str]) -> dict[str, Any]:
    """A delivery as the API shows it."""

    def at(name: str) -> str | None:
        return iso(int(h[name])) if h.get(name) else None

    return {
        "id": h.get("id"),
        "job_id": h.get("job_id"),
        "event_id": h.get("event_id"),
        "type": h.get("type"),
        "url": h.get("url"),
        "status": h.get("status"),
        "attempts": int(h.get("attempts") or 0),
        "replays": int(h.get("replays") or 0),
        "created_at": at("created_ms"),
        "last_attempt_at": at("last_attempt_ms"),
        "next_attempt_at": at("next_ms") if h.get("status") in ("pending", "failing") else None,
        "delivered_at": at("delivered_ms"),
        "dead_at": at("dead_ms"),
        "last_status": int(h["last_status"]) if h.get("last_status") not in (None, "", "0") else None,
        "last_error": h.get("last_error") or None,
    }


@router.get("/v1/webhooks/deliveries", summary="The tenant's webhook deliveries, newest first")
async def list_deliveries(
    request: Request,
    tenant_name: Annotated[str, Depends(tenant)],
    status: Annotated[
        str | None, Query(description="failed | pending | failing | delivered | dead | disabled")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[int, Query(ge=0, le=MAX_CURSOR, description="next_cursor of the previous page")] = 0,
) -> JsonResponse:
    """Each delivery's status, attempts, last answer and times; ``next_cursor`` pages on (null at the end)."""
    if status is not None and status != "failed" and status not in STATUSES:
        raise InvalidRequest(f"status must be failed or one of {', '.join(STATUSES)}", "status")
    wanted = FAILED if status == "failed" else ({status} if status else None)
    redis = request.app.state.redis
    index = keys.tenant_deliveries(tenant_name)
    page: list[dict[str, Any]] = []
    offset = cursor
    while len(page) < limit:
        ids = await redis.zrevrange(index, offset, offset + SCAN_SLICE - 1)
        if not ids:
            return JsonResponse({"data": page, "next_cursor": None})
        async with redis.pipeline(transaction=False) as pipe:
            for did in ids:
                pipe.hgetall(keys.webhook_delivery(did.decode()))
            rows = await pipe.execute()
        for raw in rows:
            offset += 1
            h = {k.decode(): v.decode() for k, v in raw.items()}
            if h and (wanted is None or h.get("status") in wanted):
                page.append(view(h))
                if len(page) == limit:
                    break
    more = await redis.zcard(index) > offset
    return JsonResponse({"data": page, "next_cursor": offset if more else None})


def _since_ms(value: Any) -> int:
    if not isinstance(value, str):
        raise InvalidRequest("since must be an RFC 3339 time, e.g. 2026-01-01T00:00:00Z", "since")
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(f"since is not an RFC 3339 time: {value!r}", "since") from None
    if when.tzinfo is None:
        raise InvalidRequest("since needs a time zone (e.g. a trailing Z)", "since")
    return int(when.timestamp() * 1000)


async def _replay_ids(request: Request, tenant_name: str, body: Any) -> list[str]:
    """The delivery ids a replay body names: ``{"ids": [...]}`` or ``{"since": <RFC 3339>}``."""
    if not isinstance(body, dict) or len(body.keys() & {"ids", "since"}) != 1 or set(body) - {"ids", "since"}:
        raise InvalidRequest('send exactly one of {"ids": [...]} or {"since": "<RFC 3339>"}', "body")
    if "ids" in body:
        ids = body["ids"]
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids):
            raise InvalidRequest("ids must be a non-empty list of delivery ids", "ids")
        if len(ids) > MAX_REPLAY_IDS:
            raise InvalidRequest(f"at most {MAX_REPLAY_IDS} ids per replay", "ids")
        return list(dict.fromkeys(ids))
    since = _since_ms(body["since"])
    redis = request.app.state.redis
    dead = await redis.zrangebyscore(keys.WEBHOOKS_DEAD, since, "+inf", start=0, num=MAX_REPLAY_SINCE * 10)
    async with redis.pipeline(transaction=False) as pipe:
        for did in dead:
            pipe.hget(keys.webhook_delivery(did.decode()), "tenant")
        owners = await pipe.execute()
    mine = [d.decode() for d, o in zip(dead, owners, strict=True) if o == tenant_name.encode()]
    return mine[:MAX_REPLAY_SINCE]


@router.post(
    "/v1/webhooks/replay",
    summary="Send dead-lettered deliveries again",
    openapi_extra=request_body(ReplayRequest),
)
async def replay(request: Request, tenant_name: Annotated[str, Depends(tenant)]) -> JsonResponse:
    """Moves each named (or each since-``since``) dead delivery back to due now; same ``webhook-id``."""
    body = await read_json(request, REPLAY_BODY_LIMIT)
    ids = await _replay_ids(request, tenant_name, body)
    replayed, skipped = await replay_deliveries(request.app.state.redis, tenant_name, ids)
    return JsonResponse({"replayed": replayed, "skipped": skipped})


async def replay_deliveries(
    redis: Redis, tenant_name: str, ids: list[str]
) -> tuple[list[str], list[dict[str, str]]]:
    """Replay the tenant's dead deliveries among ``ids`` in one Lua step (the console's replay
    button calls it too); returns the replayed ids and the skipped ones with why."""
    replayed: list[str] = []
    skipped: list[dict[str, str]] = []
    if not ids:
        return replayed, skipped
    async with redis.pipeline(transaction=False) as pipe:
        for did in ids:
            pipe.hget(keys.webhook_delivery(did), "url")
        urls = await pipe.execute()
    pairs: list[str] = []
    for did, url in zip(ids, urls, strict=True):
        pairs += [did, keys.disabled_url(url_hash(tenant_name, url.decode())) if url else ""]
    script = scripts.load(redis, "webhook_replay")
    flat = await script(
        keys=[keys.WEBHOOKS_DUE, keys.WEBHOOKS_DEAD], args=[int(time.time() * 1000), tenant_name, *pairs]
    )
    for i in range(0, len(flat), 2):
        did, code = flat[i].decode(), flat[i + 1].decode()
        if code == "ok":
            replayed.append(did)
        else:
            skipped.append({"id": did, "reason": code})
    return replayed, skipped
