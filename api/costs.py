"""Cost, budget and metrics routes: ``GET /v1/costs``, ``GET /v1/budget``, ``GET /metrics``.

A tenant key sees its own figures; the admin key sees every tenant (and may name one with
``?tenant=``). ``/metrics`` takes the admin key too: it shows every tenant's spend, and Prometheus
sends a Bearer token with ``authorization: {credentials: ...}`` in its scrape config.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from api.auth import Caller, admin, tenant_or_admin
from api.responses import JsonResponse
from config.settings import Settings
from scheduler.costs import budgets, metrics
from scheduler.costs import reports as costs
from scheduler.errors import InvalidRequest, NotFound

router = APIRouter(tags=["costs"])


def _now_ms() -> int:
    return int(time.time() * 1000)


def _scope(caller: Caller, settings: Settings, tenant: str | None) -> list[str] | None:
    """The tenants a caller's request covers (None: all of them)."""
    if caller.tenant is not None:
        if tenant is not None and tenant != caller.tenant:
            raise NotFound(f"no tenant {tenant}", "tenant")
        return [caller.tenant]
    if tenant is None:
        return None
    if tenant not in settings.tenants:
        raise NotFound(f"no tenant {tenant}", "tenant")
    return [tenant]


@router.get("/v1/costs", summary="Cost and savings report, grouped")
async def get_costs(
    request: Request,
    caller: Annotated[Caller, Depends(tenant_or_admin)],
    group_by: Annotated[str, Query(description="tenant|feature|lane|model|route|day")] = "tenant",
    start: Annotated[str | None, Query(alias="from", description="YYYY-MM-DD or RFC 3339 (UTC day)")] = None,
    end: Annotated[str | None, Query(alias="to", description="YYYY-MM-DD or RFC 3339 (UTC day)")] = None,
    tenant: Annotated[str | None, Query(description="admin only: one tenant")] = None,
) -> JsonResponse:
    """Jobs, tokens, actual and sync-equivalent cost, savings, sync share, duplicate spend, on-time share."""
    if group_by not in costs.GROUP_BYS:
        raise InvalidRequest(f"group_by must be one of {', '.join(costs.GROUP_BYS)}", "group_by")
    settings: Settings = request.app.state.settings
    days = costs.period(start, end, datetime.now(UTC))
    scope = _scope(caller, settings, tenant)
    body = await costs.report(request.app.state.redis, group_by, days, scope)  # type: ignore[arg-type]
    return JsonResponse(body)


@router.get("/v1/budget", summary="The monthly budget's state")
async def get_budget(
    request: Request,
    caller: Annotated[Caller, Depends(tenant_or_admin)],
    tenant: Annotated[str | None, Query(description="admin only: one tenant")] = None,
) -> JsonResponse:
    """month, spent_usd, committed_usd, budget_usd, remaining_usd, policy, exhausted, resets_at; the
    admin gets every tenant."""
    settings: Settings = request.app.state.settings
    redis = request.app.state.redis
    scope = _scope(caller, settings, tenant)
    now = _now_ms()
    if scope is None:
        states: list[dict[str, Any]] = [
            (await budgets.state(redis, settings, name, now)).as_dict() for name in sorted(settings.tenants)
        ]
        return JsonResponse({"budgets": states})
    return JsonResponse((await budgets.state(redis, settings, scope[0], now)).as_dict())


@router.get("/metrics", summary="Prometheus metrics", dependencies=[Depends(admin)])
async def get_metrics(request: Request) -> Response:
    """Queue depths, job and cost counters, latency histograms, webhooks, alerts, budgets."""
    snap = await metrics.snapshot(request.app.state.redis, request.app.state.settings, _now_ms())
    return Response(metrics.render(snap), media_type=CONTENT_TYPE_LATEST)
