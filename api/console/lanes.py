"""The lanes page (admin): what ``GET /v1/lanes`` shows, as a table that refreshes itself.

The page renders the lanes once; static/console.js then polls ``/ui/data/lanes`` (the same
``slo.lane_views`` the API answers with) and redraws the rows, so no figure is computed twice.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from api.console.access import admin_viewer, data_viewer
from api.console.render import page
from api.console.sessions import Session
from api.responses import JsonResponse
from scheduler.errors import Forbidden
from scheduler.slo import tracker as slo

router = APIRouter(tags=["console"], include_in_schema=False)


async def _views(request: Request) -> list[dict[str, Any]]:
    return await slo.lane_views(request.app.state.redis, int(time.time() * 1000))


@router.get("/ui/lanes")
async def lanes_page(request: Request, session: Annotated[Session, Depends(admin_viewer)]) -> Response:
    """Every lane's state, queue, batches in flight, turnarounds, on-time SLO and burn rates."""
    settings = request.app.state.settings
    return page(
        request,
        "lanes.html",
        session,
        lanes=await _views(request),
        refresh_ms=int(settings.console.refresh_s * 1000),
    )


@router.get("/ui/data/lanes")
async def lanes_data(request: Request, session: Annotated[Session, Depends(data_viewer)]) -> JsonResponse:
    """The lanes as JSON for the page's refresh (admin only, as ``/v1/lanes``)."""
    if not session.admin:
        raise Forbidden("lanes need the admin key", "session")
    return JsonResponse({"data": await _views(request)}, headers={"cache-control": "no-store"})
