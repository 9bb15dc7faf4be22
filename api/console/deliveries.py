"""Dead-lettered webhook deliveries, with replay: ``GET /ui/deliveries``, ``POST /ui/deliveries/replay``.

The list reads the dead-letter index (newest first) and each delivery as ``GET
/v1/webhooks/deliveries`` shows it; replay runs the same guarded Lua step as ``POST
/v1/webhooks/replay`` (api.webhooks.replay_deliveries), one call per owning tenant. Replay is the
admin's (a tenant's session is read-only) and carries the session's CSRF token.
"""

from __future__ import annotations

from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from api.console.access import admin_viewer, tenant_scope, viewer
from api.console.render import page
from api.console.sessions import Session, check_csrf
from api.webhooks import replay_deliveries, view
from scheduler.errors import InvalidRequest
from scheduler.ledger import keys

log = structlog.get_logger(__name__)

router = APIRouter(tags=["console"], include_in_schema=False)

SHOWN = 200  # deliveries one page lists
SCAN_SLICE = 200
MAX_REPLAY = 1000


async def dead_deliveries(request: Request, tenants: list[str] | None) -> list[dict[str, Any]]:
    """The newest dead-lettered deliveries of ``tenants`` (None: all), at most SHOWN."""
    redis = request.app.state.redis
    wanted = set(tenants) if tenants is not None else None
    found: list[dict[str, Any]] = []
    limit = request.app.state.settings.retention.dead_letter_max
    offset = 0
    while len(found) < SHOWN and offset < limit:
        ids = await redis.zrevrange(keys.WEBHOOKS_DEAD, offset, offset + SCAN_SLICE - 1)
        if not ids:
            break
        offset += len(ids)
        async with redis.pipeline(transaction=False) as pipe:
            for did in ids:
                pipe.hgetall(keys.webhook_delivery(did.decode()))
            rows = await pipe.execute()
        for raw in rows:
            h = {k.decode(): v.decode() for k, v in raw.items()}
            if h and (wanted is None or h.get("tenant") in wanted):
                found.append({**view(h), "tenant": h.get("tenant")})
    return found[:SHOWN]


@router.get("/ui/deliveries")
async def deliveries_page(
    request: Request,
    session: Annotated[Session, Depends(viewer)],
    tenant: Annotated[str, Query(max_length=64)] = "",
    replayed: Annotated[int | None, Query(ge=0)] = None,
    skipped: Annotated[int | None, Query(ge=0)] = None,
) -> Response:
    """Dead-lettered deliveries (the admin may replay them)."""
    settings = request.app.state.settings
    scope = tenant_scope(session, settings, tenant or None)
    return page(
        request,
        "deliveries.html",
        session,
        deliveries=await dead_deliveries(request, scope),
        tenants=sorted(settings.tenants) if session.admin else [],
        chosen={"tenant": tenant},
        outcome={"replayed": replayed, "skipped": skipped} if replayed is not None else None,
    )


@router.post("/ui/deliveries/replay")
async def replay(request: Request, session: Annotated[Session, Depends(admin_viewer)]) -> Response:
    """Replay the checked deliveries (form field ``id``, repeated), then show the list again."""
    form = await request.form(max_files=0, max_fields=MAX_REPLAY + 1)
    check_csrf(session, str(form.get("csrf") or ""))
    ids = list(dict.fromkeys(str(v) for v in form.getlist("id") if isinstance(v, str) and v))
    if not ids:
        raise InvalidRequest("tick at least one delivery to replay", "id")
    redis = request.app.state.redis
    async with redis.pipeline(transaction=False) as pipe:
        for did in ids:
            pipe.hget(keys.webhook_delivery(did), "tenant")
        owners = await pipe.execute()
    by_tenant: dict[str, list[str]] = {}
    skipped = 0
    for did, owner in zip(ids, owners, strict=True):
        if owner is None:
            skipped += 1
        else:
            by_tenant.setdefault(owner.decode(), []).append(did)
    replayed = 0
    for tenant_name, tenant_ids in sorted(by_tenant.items()):
        done, refused = await replay_deliveries(redis, tenant_name, tenant_ids)
        replayed += len(done)
        skipped += len(refused)
    log.info("console.deliveries_replayed", replayed=replayed, skipped=skipped)
    return Response(
        status_code=303, headers={"location": f"/ui/deliveries?replayed={replayed}&skipped={skipped}"}
    )
