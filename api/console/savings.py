"""The savings page: actual vs sync-equivalent cost and duplicate spend over time, by tenant and
feature, read from the same cost reports as ``GET /v1/costs`` (scheduler.costs.reports)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from api.console.access import tenant_scope, viewer
from api.console.chart import SERIES, savings_chart
from api.console.render import page
from api.console.sessions import Session
from scheduler.costs import reports as costs

router = APIRouter(tags=["console"], include_in_schema=False)

PERIODS = (7, 30, 90)


async def _daily(
    request: Request, days: costs.Period, scope: list[str] | None, feature: str | None
) -> dict[str, dict[str, Any]]:
    """Day -> cost row: the scope's daily totals, or one feature's (a feature report per day)."""
    redis = request.app.state.redis
    if not feature:
        body = await costs.report(redis, "day", days, scope)
        return {row["key"]: row for row in body["groups"]}
    rows: dict[str, dict[str, Any]] = {}
    for day in days.days():
        one_day = datetime.fromisoformat(day).date()
        body = await costs.report(redis, "feature", costs.Period(one_day, one_day), scope)
        row = next((r for r in body["groups"] if r["key"] == feature), None)
        if row is not None:
            rows[day] = row
    return rows


def _total(by_tenant: dict[str, Any], by_feature: dict[str, Any], feature: str | None) -> dict[str, Any]:
    """The figures the page's headline shows: the scope's total, or the chosen feature's row."""
    if not feature:
        total: dict[str, Any] = by_tenant["total"]
        return total
    row = next((r for r in by_feature["groups"] if r["key"] == feature), None)
    return row if row is not None else costs.summarise(None, {})


@router.get("/ui/savings")
async def savings_page(
    request: Request,
    session: Annotated[Session, Depends(viewer)],
    tenant: Annotated[str | None, Query(max_length=64)] = None,
    feature: Annotated[str | None, Query(max_length=256)] = None,
    days: Annotated[int, Query()] = 30,
) -> Response:
    """The chart over the last ``days`` days (7, 30 or 90), then the figures by tenant and feature."""
    settings = request.app.state.settings
    scope = tenant_scope(session, settings, tenant)
    count = days if days in PERIODS else 30
    today = datetime.now(UTC).date()
    period = costs.Period(today - timedelta(days=count - 1), today)
    redis = request.app.state.redis
    by_tenant = await costs.report(redis, "tenant", period, scope)
    by_feature = await costs.report(redis, "feature", period, scope)
    daily = await _daily(request, period, scope, feature or None)
    chart = savings_chart(period.days(), daily)
    return page(
        request,
        "savings.html",
        session,
        chart=chart,
        series=SERIES,
        daily=[(day, daily[day]) for day in period.days() if day in daily],
        by_tenant=by_tenant["groups"],
        by_feature=by_feature["groups"],
        total=_total(by_tenant, by_feature, feature),
        tenants=sorted(settings.tenants) if session.admin else [],
        features=[row["key"] for row in by_feature["groups"]],
        chosen={"tenant": tenant or "", "feature": feature or "", "days": count},
        periods=PERIODS,
    )
