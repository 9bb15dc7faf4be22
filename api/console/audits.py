"""Uploaded audit reports (``batchshift audit --html`` / ``--json`` output): upload, list, view.

Reports are stored in Redis under ``console.audit_max_bytes`` each, the newest
``console.audit_max_reports`` kept. An HTML report is shown in a sandboxed frame and served with a
``sandbox`` Content-Security-Policy, so its scripts (its charts) run in an opaque origin that can
reach neither the console's pages nor its session; a JSON report is shown as its feature table.
Uploading is the admin's and carries the session's CSRF token.
"""

from __future__ import annotations

import secrets
import time
from pathlib import PurePath
from typing import Annotated, Any

import orjson
import structlog
from fastapi import APIRouter, Depends, Request
from starlette.datastructures import UploadFile
from starlette.responses import RedirectResponse, Response

from api.console.access import admin_viewer
from api.console.render import page
from api.console.sessions import Session, check_csrf
from config.settings import Settings
from scheduler.errors import InvalidRequest, NotFound, PayloadTooLarge
from scheduler.ledger import keys
from scheduler.ledger.jobs import iso

log = structlog.get_logger(__name__)

router = APIRouter(tags=["console"], include_in_schema=False)

# Room for the multipart framing and the form's other fields around the file itself.
FORM_OVERHEAD_BYTES = 64 * 1024
MAX_NAME_CHARS = 120
REPORT_ID_CHARS = 29
# An HTML report runs its own scripts (charts), but in an opaque origin: no cookies, no console DOM.
REPORT_POLICY = "sandbox allow-scripts; default-src 'none'; script-src 'unsafe-inline'; " + (
    "style-src 'unsafe-inline'; img-src data:; font-src data:; frame-ancestors 'self'"
)


def report_kind(body: bytes) -> str:
    """``json`` or ``html`` by content; InvalidRequest for anything else."""
    text = body.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith((b"{", b"[")):
        try:
            orjson.loads(text)
        except orjson.JSONDecodeError:
            raise InvalidRequest("the file looks like JSON but does not parse", "report") from None
        return "json"
    if text[:15].lower().startswith((b"<!doctype html", b"<html")):
        return "html"
    raise InvalidRequest(
        "not an audit report: upload the HTML or JSON file `batchshift audit` wrote", "report"
    )


def _name(filename: str | None) -> str:
    name = PurePath((filename or "report").replace("\\", "/")).name.strip() or "report"
    return name[:MAX_NAME_CHARS]


async def _read_upload(request: Request, settings: Settings) -> tuple[str, bytes, str]:
    """The form's CSRF token, the file's bytes (within the cap) and its name."""
    cap = settings.console.audit_max_bytes
    declared = request.headers.get("content-length")
    if declared is None or not declared.isdigit():
        raise InvalidRequest("an upload needs a Content-Length", "content-length")
    if int(declared) > cap + FORM_OVERHEAD_BYTES:
        raise PayloadTooLarge(f"the report is over the limit of {cap} bytes", "report")
    form = await request.form(max_files=1, max_fields=4)
    upload = form.get("report")
    if not isinstance(upload, UploadFile):
        raise InvalidRequest("choose a report file to upload", "report")
    body = await upload.read(cap + 1)
    if len(body) > cap:
        raise PayloadTooLarge(f"the report is over the limit of {cap} bytes", "report")
    if not body.strip():
        raise InvalidRequest("the report file is empty", "report")
    return str(form.get("csrf") or ""), body, _name(upload.filename)


@router.post("/ui/audits")
async def upload(request: Request, session: Annotated[Session, Depends(admin_viewer)]) -> Response:
    """Store an uploaded report and open it."""
    settings: Settings = request.app.state.settings
    csrf, body, name = await _read_upload(request, settings)
    check_csrf(session, csrf)
    kind = report_kind(body)
    now = int(time.time() * 1000)
    report_id = f"{now:013d}{secrets.token_hex(8)}"
    redis = request.app.state.redis
    number = await redis.incr(keys.CONSOLE_AUDIT_SEQ)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(
            keys.console_audit(report_id),
            mapping={"name": name, "kind": kind, "size": len(body), "uploaded_ms": now, "body": body},
        )
        pipe.zadd(keys.CONSOLE_AUDITS, {report_id: number})
        await pipe.execute()
    old = await redis.zrange(keys.CONSOLE_AUDITS, 0, -(settings.console.audit_max_reports + 1))
    if old:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.delete(*(keys.console_audit(r.decode()) for r in old))
            pipe.zrem(keys.CONSOLE_AUDITS, *old)
            await pipe.execute()
    log.info("console.audit_uploaded", report_id=report_id, kind=kind, size=len(body))
    return RedirectResponse(f"/ui/audits/{report_id}", status_code=303)


@router.get("/ui/audits")
async def audits_page(request: Request, session: Annotated[Session, Depends(admin_viewer)]) -> Response:
    """The upload form and the stored reports, newest first."""
    redis = request.app.state.redis
    ids = [r.decode() for r in await redis.zrevrange(keys.CONSOLE_AUDITS, 0, -1)]
    async with redis.pipeline(transaction=False) as pipe:
        for report_id in ids:
            pipe.hmget(keys.console_audit(report_id), ["name", "kind", "size", "uploaded_ms"])
        rows = await pipe.execute()
    reports = [
        {"id": rid, "name": n.decode(), "kind": k.decode(), "size": int(s), "uploaded": iso(int(u))}
        for rid, (n, k, s, u) in zip(ids, rows, strict=True)
        if n is not None
    ]
    cap = request.app.state.settings.console.audit_max_bytes
    return page(request, "audits.html", session, reports=reports, cap_mib=round(cap / 2**20, 1))


async def _stored(request: Request, report_id: str) -> dict[str, bytes]:
    if len(report_id) != REPORT_ID_CHARS or not report_id.isalnum():
        raise NotFound(f"no audit report {report_id}", "id")
    raw = await request.app.state.redis.hgetall(keys.console_audit(report_id))
    if not raw:
        raise NotFound(f"no audit report {report_id}", "id")
    return {k.decode(): v for k, v in raw.items()}


def summary(body: bytes) -> dict[str, Any] | None:
    """The features and total of a JSON report in the audit's contract shape, else None."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("features"), list):
        return None
    features = [f for f in data["features"] if isinstance(f, dict)]
    total = data.get("total") if isinstance(data.get("total"), dict) else {}
    return {"features": features, "total": total}


@router.get("/ui/audits/{report_id}")
async def audit_page(
    request: Request, report_id: str, session: Annotated[Session, Depends(admin_viewer)]
) -> Response:
    """One report: an HTML report in a sandboxed frame, a JSON report as its feature table."""
    stored = await _stored(request, report_id)
    body = stored["body"]
    kind = stored["kind"].decode()
    return page(
        request,
        "audit.html",
        session,
        report={
            "id": report_id,
            "name": stored["name"].decode(),
            "kind": kind,
            "size": int(stored["size"]),
            "uploaded": iso(int(stored["uploaded_ms"])),
        },
        summary=summary(body) if kind == "json" else None,
        pretty=orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2).decode()
        if kind == "json"
        else "",
    )


@router.get("/ui/audits/{report_id}/file")
async def audit_file(
    request: Request, report_id: str, session: Annotated[Session, Depends(admin_viewer)]
) -> Response:
    """The report as uploaded, sandboxed (the audit page frames it)."""
    stored = await _stored(request, report_id)
    media = "text/html; charset=utf-8" if stored["kind"] == b"html" else "application/json"
    return Response(
        stored["body"],
        media_type=media,
        headers={
            "content-security-policy": REPORT_POLICY,
            "x-content-type-options": "nosniff",
            "cache-control": "no-store",
            "referrer-policy": "no-referrer",
        },
    )
