"""Liveness and readiness: ``/healthz`` says the process is up, ``/readyz`` that Redis answers."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from redis.exceptions import RedisError

from api.responses import JsonResponse

router = APIRouter(tags=["health"])

# Seconds /readyz waits for PING: a probe must answer before the orchestrator gives up on it.
READY_TIMEOUT_S = 2.0


@router.get("/healthz", summary="The process is up")
async def healthz() -> JsonResponse:
    """Answers 200 while the process runs; it checks nothing else, so a load balancer never flaps on Redis."""
    return JsonResponse({"status": "ok"})


@router.get("/readyz", summary="Redis answers", responses={503: {"description": "Redis does not answer"}})
async def readyz(request: Request) -> JsonResponse:
    """Answers 200 when Redis answers a PING, 503 otherwise, so traffic goes only where jobs can be kept."""
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            await request.app.state.redis.ping()
    except (RedisError, OSError, TimeoutError) as exc:
        return JsonResponse(
            {"status": "unavailable", "redis": type(exc).__name__},
            status_code=503,
        )
    return JsonResponse({"status": "ok", "redis": "ok"})
