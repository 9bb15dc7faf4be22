"""``GET /v1/lanes`` (admin key): every lane's state, queue, turnarounds, on-time SLO and predictions."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request

from api.auth import admin
from api.responses import JsonResponse
from scheduler.slo import tracker as slo

router = APIRouter(tags=["lanes"])


@router.get("/v1/lanes", summary="Lane health for operators", dependencies=[Depends(admin)])
async def get_lanes(request: Request) -> JsonResponse:
    """Per lane: state, queued count, oldest job age, batches in flight, turnaround quantiles,
    on-time ratio, burn rates, sync share and the predicted completion of its oldest job."""
    lanes = await slo.lane_views(request.app.state.redis, int(time.time() * 1000))
    return JsonResponse({"data": lanes})
