"""Who may see what in the console: FastAPI dependencies over the session cookie.

A page without a session redirects to the sign-in form; a JSON read answers 401. The admin sees
every tenant; a tenant's session is read-only and scoped to itself (another tenant's job or
delivery answers 404, as the API does).
"""

from __future__ import annotations

from fastapi import Request
from starlette.exceptions import HTTPException

from api.console.sessions import COOKIE, Session, read_session
from config.settings import Settings
from scheduler.errors import Forbidden, NotFound, Unauthorized

LOGIN_PATH = "/ui/login"


async def _session(request: Request) -> Session | None:
    return await read_session(request.app.state.redis, request.cookies.get(COOKIE))


async def viewer(request: Request) -> Session:
    """Dependency for pages: the signed-in session, else a 303 to the sign-in form."""
    session = await _session(request)
    if session is None:
        raise HTTPException(303, "sign in first", headers={"location": LOGIN_PATH})
    return session


async def admin_viewer(request: Request) -> Session:
    """Dependency for admin pages and every state change: 403 for a tenant's session."""
    session = await viewer(request)
    if not session.admin:
        raise Forbidden("this console page needs the admin key; a tenant's session is read-only", "session")
    return session


async def data_viewer(request: Request) -> Session:
    """Dependency for the console's JSON reads: 401 without a session (a script cannot follow a
    redirect to a form)."""
    session = await _session(request)
    if session is None:
        raise Unauthorized("no console session: sign in at /ui/login", "session")
    return session


def tenant_scope(session: Session, settings: Settings, tenant: str | None) -> list[str] | None:
    """The tenants a page covers (None: all). A tenant's session is always itself; the admin may
    narrow to one configured tenant."""
    if session.tenant is not None:
        return [session.tenant]
    if not tenant:
        return None
    if tenant not in settings.tenants:
        raise NotFound(f"no tenant {tenant}", "tenant")
    return [tenant]
