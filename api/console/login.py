"""Signing in and out of the console: ``GET/POST /ui/login``, ``POST /ui/logout``, ``GET /ui/``.

The form takes an API key (the admin's, or a tenant's for its read-only view). The key is checked
as the API checks a Bearer key (api.auth.identify, constant time) and is then forgotten: the
session cookie holds only a random token. Sign-in and sign-out are state changes, so both carry a
CSRF token (sign-in's in a short-lived cookie, as no session exists yet).
"""

from __future__ import annotations

import secrets
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, Form, Request
from starlette.responses import RedirectResponse, Response

from api.auth import identify
from api.console.access import viewer
from api.console.render import page
from api.console.sessions import (
    COOKIE,
    LOGIN_COOKIE,
    LOGIN_COOKIE_MAX_AGE_S,
    PATH,
    Session,
    check_csrf,
    close_session,
    cookie_secure,
    open_session,
    tokens_match,
)
from config.settings import Settings

log = structlog.get_logger(__name__)

router = APIRouter(tags=["console"], include_in_schema=False)

MAX_KEY_CHARS = 1024


def _home(session: Session) -> str:
    return "/ui/lanes" if session.admin else "/ui/savings"


@router.get("/ui")
@router.get("/ui/")
async def home(session: Annotated[Session, Depends(viewer)]) -> RedirectResponse:
    """The signed-in user's first page: lanes for the admin, savings for a tenant."""
    return RedirectResponse(_home(session), status_code=303)


def _login_form(request: Request, *, error: str | None = None, status: int = 200) -> Response:
    token = secrets.token_urlsafe(32)
    response = page(request, "login.html", None, status=status, login_csrf=token, error=error)
    response.set_cookie(
        LOGIN_COOKIE,
        token,
        max_age=LOGIN_COOKIE_MAX_AGE_S,
        path="/ui/login",
        httponly=True,
        samesite="strict",
        secure=cookie_secure(request, request.app.state.settings),
    )
    return response


@router.get("/ui/login")
async def login_form(request: Request) -> Response:
    """The sign-in form."""
    return _login_form(request)


@router.post("/ui/login")
async def login(
    request: Request,
    key: Annotated[str, Form(max_length=MAX_KEY_CHARS)] = "",
    csrf: Annotated[str, Form(max_length=256)] = "",
) -> Response:
    """Check the key; on success open a session and go to the first page, else show the form again."""
    settings: Settings = request.app.state.settings
    if not tokens_match(csrf, request.cookies.get(LOGIN_COOKIE, "")):
        return _login_form(request, error="The form expired: please sign in again.", status=403)
    caller = identify(settings, key.strip()) if key.strip() else None
    if caller is None:
        log.info("console.sign_in_refused")
        return _login_form(request, error="That key is not valid.", status=401)
    redis = request.app.state.redis
    if previous := request.cookies.get(COOKIE):  # a new sign-in ends the session it replaces
        await close_session(redis, previous)
    token = await open_session(redis, caller.tenant, settings.console.session_ttl_s)
    session = Session(tenant=caller.tenant, csrf="")
    log.info("console.signed_in", tenant=caller.tenant, admin=caller.admin)
    response = RedirectResponse(_home(session), status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        max_age=settings.console.session_ttl_s,
        path=PATH,
        httponly=True,
        samesite="strict",
        secure=cookie_secure(request, settings),
    )
    response.delete_cookie(LOGIN_COOKIE, path="/ui/login")
    return response


@router.post("/ui/logout")
async def logout(
    request: Request,
    session: Annotated[Session, Depends(viewer)],
    csrf: Annotated[str, Form(max_length=256)] = "",
) -> RedirectResponse:
    """End the session (its Redis key goes) and clear the cookie."""
    check_csrf(session, csrf)
    await close_session(request.app.state.redis, request.cookies[COOKIE])
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path=PATH, httponly=True, samesite="strict")
    return response
