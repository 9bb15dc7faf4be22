"""The web console at ``/ui/``: lanes, savings, job timelines, dead letters and audit reports.

Server-rendered pages (render.py, templates/) with one CSS file and one small script (static/),
behind a session cookie opened by signing in with an API key (sessions.py, login.py). The admin's
session sees everything and may replay deliveries and upload reports; a tenant's session is
read-only and sees only its own tenant (access.py). Every figure comes from the code that serves
the JSON API (scheduler.slo.tracker, scheduler.costs.reports, the ledger), never recomputed here.
"""

from __future__ import annotations

from fastapi import APIRouter

from api.console import audits, deliveries, jobs, lanes, login, savings, static_files

router = APIRouter()
for _part in (login, lanes, savings, jobs, deliveries, audits, static_files):
    router.include_router(_part.router)
