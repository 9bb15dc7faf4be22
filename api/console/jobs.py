"""Job search and a job's timeline: ``GET /ui/jobs`` and ``GET /ui/jobs/{id}``.

Search by id, or list by tenant, status and feature through the ledger's own listing (the one
``GET /v1/jobs`` uses). A tenant's session finds only its own jobs; another tenant's job is "not
found", never revealed.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import RedirectResponse, Response

from api.console.access import tenant_scope, viewer
from api.console.render import page
from api.console.sessions import Session
from api.console.timeline import timeline
from scheduler.errors import NotFound
from scheduler.ledger import keys
from scheduler.ledger.jobs import JobRecord
from scheduler.ledger.ledger import Ledger

router = APIRouter(tags=["console"], include_in_schema=False)

JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
PAGE_SIZE = 50
STATUSES = ("queued", "batched", "sync", "succeeded", "failed", "cancelled")
Status = Literal["", "queued", "batched", "sync", "succeeded", "failed", "cancelled"]


async def _visible(ledger: Ledger, session: Session, job_id: str) -> JobRecord | None:
    """The job, if it exists and the session may see it."""
    record = await ledger.get(job_id) if JOB_ID.match(job_id) else None
    if record is None or (session.tenant is not None and record.tenant != session.tenant):
        return None
    return record


@router.get("/ui/jobs")
async def jobs_page(
    request: Request,
    session: Annotated[Session, Depends(viewer)],
    job_id: Annotated[str, Query(alias="id", max_length=64)] = "",
    tenant: Annotated[str, Query(max_length=64)] = "",
    status: Annotated[Status, Query()] = "",
    feature: Annotated[str, Query(max_length=256)] = "",
    cursor: Annotated[str, Query(pattern=r"^[A-Za-z0-9_-]{0,64}$")] = "",
) -> Response:
    """A found id opens its timeline; otherwise the newest jobs matching the filters. One tenant's
    list pages on with ``cursor`` (the ledger's listing cursor); all tenants' shows the newest page."""
    ledger: Ledger = request.app.state.ledger
    settings = request.app.state.settings
    job_id = job_id.strip()
    if job_id:
        if await _visible(ledger, session, job_id) is not None:
            return RedirectResponse(f"/ui/jobs/{job_id}", status_code=303)
    scope = tenant_scope(session, settings, tenant or None) or sorted(settings.tenants)
    found: list[JobRecord] = []
    next_cursor: str | None = None
    for name in scope:
        records, next_cursor = await ledger.list_jobs(
            name,
            status=status or None,
            feature=feature or None,
            limit=PAGE_SIZE,
            cursor=(cursor or None) if len(scope) == 1 else None,
        )
        found += records
    found.sort(key=lambda r: r.id, reverse=True)  # ids sort by creation time
    return page(
        request,
        "jobs.html",
        session,
        jobs=[{**r.view(), "tenant": r.tenant} for r in found[:PAGE_SIZE]],
        missing=job_id or None,
        tenants=sorted(settings.tenants) if session.admin else [],
        statuses=STATUSES,
        chosen={"id": job_id, "tenant": tenant, "status": status, "feature": feature},
        older=urlencode({"tenant": tenant, "status": status, "feature": feature, "cursor": next_cursor})
        if next_cursor and len(scope) == 1
        else None,
    )


@router.get("/ui/jobs/{job_id}")
async def job_page(request: Request, job_id: str, session: Annotated[Session, Depends(viewer)]) -> Response:
    """The job's details and its timeline: enqueued, batched, flipped, ended, webhook attempts."""
    ledger: Ledger = request.app.state.ledger
    record = await _visible(ledger, session, job_id)
    if record is None:
        raise NotFound(f"no job {job_id}", "id")
    raw = await request.app.state.redis.hgetall(keys.webhook_delivery(f"wh_{record.id}"))
    delivery = {k.decode(): v.decode() for k, v in raw.items()}
    return page(
        request,
        "job.html",
        session,
        job={**record.view(), "tenant": record.tenant, "batch_id": record.batch_id},
        events=timeline(record, delivery),
        delivery_status=delivery.get("status"),
    )
