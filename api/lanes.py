"""``GET /v1/lanes`` (admin key): every lane's state, queue, turnarounds, on-time SLO and predictions,
and its prompt-cache share over the cost report's default period."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Request

from api.auth import admin
from api.responses import JsonResponse
from scheduler.costs import reports as costs
from scheduler.slo import tracker as slo

router = APIRouter(tags=["lanes"])


@router.get("/v1/lanes", summary="Lane health for operators", dependencies=[Depends(admin)])
async def get_lanes(request: Request) -> JsonResponse:
    """Per lane: state, queued count, oldest job age, batches in flight, turnaround quantiles,
    on-time ratio, burn rates, sync share, the predicted completion of its oldest job, and the share
    of its input tokens read from the provider's prompt cache (``cache_share``, last 30 UTC days)."""
    redis = request.app.state.redis
    lanes = await slo.lane_views(redis, int(time.time() * 1000))
    by_lane = await costs.report(redis, "lane", costs.period(None, None, datetime.now(UTC)))
    shares = {row["key"]: row["cache_share"] for row in by_lane["groups"]}
    for view in lanes:
        view["cache_share"] = shares.get(view["lane"])
    return JsonResponse({"data": lanes})
