"""Who is calling: FastAPI dependencies that turn a Bearer key into a tenant name or the admin.

Keys are compared in constant time against every configured key (no early exit), so the answer's
timing does not tell how much of a guessed key was right, nor which tenant it came close to.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi import Request

from config.settings import Settings
from scheduler.errors import Forbidden, Unauthorized


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller: a tenant, or the admin (``tenant`` is None)."""

    tenant: str | None

    @property
    def admin(self) -> bool:
        return self.tenant is None


def bearer_key(request: Request) -> str:
    """The Bearer token of the request; raise Unauthorized when there is none."""
    return bearer_token(request.headers.get("authorization", ""))


def bearer_token(header: str) -> str:
    """The token of an ``Authorization: Bearer ...`` header value; raise Unauthorized when there is none."""
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing Bearer API key", "authorization")
    return token


def _match(given: bytes, expected: str) -> bool:
    return hmac.compare_digest(given, expected.encode())


def identify(settings: Settings, key: str) -> Caller | None:
    """The caller a key belongs to, or None; every configured key is compared."""
    given = key.encode()
    found: Caller | None = None
    for name, tenant_settings in settings.tenants.items():
        if _match(given, tenant_settings.api_key.get_secret_value()) and found is None:
            found = Caller(tenant=name)
    admin_key = settings.admin_api_key.get_secret_value() if settings.admin_api_key else ""
    if admin_key and _match(given, admin_key) and found is None:
        found = Caller(tenant=None)
    return found


def caller(request: Request) -> Caller:
    """Dependency: the authenticated caller, tenant or admin; 401 when the key is missing or unknown."""
    settings: Settings = request.app.state.settings
    return known_caller(settings, bearer_key(request))


def known_caller(settings: Settings, key: str) -> Caller:
    """The caller ``key`` belongs to; 401 when it belongs to nobody."""
    found = identify(settings, key)
    if found is None:
        raise Unauthorized("unknown API key", "authorization")
    return found


def tenant_of(settings: Settings, authorization: str) -> str:
    """The tenant an ``Authorization`` header names; 401 for a missing or unknown key, 403 for the admin
    key. The enqueue fast path (api/enqueue_path.py) calls it with the raw header."""
    found = known_caller(settings, bearer_token(authorization))
    if found.tenant is None:
        raise Forbidden("this endpoint takes a tenant API key, not the admin key", "authorization")
    return found.tenant


# The dependencies are ``async def`` though they never await: FastAPI runs a plain ``def``
# dependency in a worker thread, a thread hop per request that cost a single enqueue about 7%.


async def tenant(request: Request) -> str:
    """Dependency: the calling tenant's name; 401 for a missing or unknown key, 403 for the admin key."""
    settings: Settings = request.app.state.settings
    return tenant_of(settings, request.headers.get("authorization", ""))


async def anthropic_tenant(request: Request) -> str:
    """Dependency of the Anthropic-shaped routes only: the tenant whose key is in ``x-api-key``, as
    the ``anthropic`` SDK sends it (a Bearer key is taken too); 401 / 403 as :func:`tenant`."""
    key = request.headers.get("x-api-key", "").strip()
    if not key:
        return await tenant(request)
    settings: Settings = request.app.state.settings
    found = identify(settings, key)
    if found is None:
        raise Unauthorized("unknown API key", "x-api-key")
    if found.tenant is None:
        raise Forbidden("this endpoint takes a tenant API key, not the admin key", "x-api-key")
    return found.tenant


async def admin(request: Request) -> None:
    """Dependency: require the admin key; 401 for a missing or unknown key, 403 for a tenant key."""
    if not caller(request).admin:
        raise Forbidden("this endpoint needs the admin API key", "authorization")


async def tenant_or_admin(request: Request) -> Caller:
    """Dependency: a tenant (sees its own data) or the admin (sees all)."""
    return caller(request)
