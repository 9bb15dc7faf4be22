"""Server-rendered console pages: the one module that uses Jinja2 (autoescaping every value).

Pages carry a strict Content-Security-Policy: scripts and styles only from the console's own
static files (no inline script, no CDN), no framing, forms posting only to the console.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.responses import HTMLResponse

from api.console.chart import money
from api.console.sessions import Session

_ENV = Environment(
    loader=PackageLoader("api.console", "templates"),
    autoescape=select_autoescape(["html", "svg"]),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.globals["money"] = money

PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": PAGE_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}

# The navigation: (path, label, admin only).
NAV = (
    ("/ui/lanes", "Lanes", True),
    ("/ui/savings", "Savings", False),
    ("/ui/jobs", "Jobs", False),
    ("/ui/deliveries", "Dead letters", False),
    ("/ui/audits", "Audit reports", True),
)


def page(
    request: Request, template: str, session: Session | None, *, status: int = 200, **context: Any
) -> HTMLResponse:
    """Render ``template`` with the signed-in session's navigation and CSRF token."""
    nav = [
        {"path": path, "label": label, "current": request.url.path.startswith(path)}
        for path, label, admin_only in NAV
        if session is not None and (session.admin or not admin_only)
    ]
    html = _ENV.get_template(template).render(
        session=session,
        who=("admin" if session.admin else f"tenant {session.tenant}") if session else None,
        csrf=session.csrf if session else "",
        nav=nav,
        **context,
    )
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)
