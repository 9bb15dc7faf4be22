"""Console sessions: a random token in an HttpOnly, SameSite=Strict cookie, its state in Redis.

The cookie (``batchshift_session``, a contract) holds a random token; Redis holds, under the token's
SHA-256, who signed in (a tenant, or the admin) and the session's CSRF token, with a TTL. The API key
that signed in is checked once and never stored, logged or echoed. Every state change the console
makes (sign-out, replay, upload) sends the CSRF token in a form field, compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from fastapi import Request
from redis.asyncio import Redis

from config.settings import Settings
from scheduler.errors import Forbidden
from scheduler.ledger import keys

COOKIE = "batchshift_session"
# The sign-in form's own CSRF token (double submit): before a session exists there is nothing in
# Redis to compare with, so the form's hidden field must match this short-lived cookie.
LOGIN_COOKIE = "batchshift_login"
LOGIN_COOKIE_MAX_AGE_S = 3600
PATH = "/ui"


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in console user: a tenant (read-only, its own data) or the admin (``tenant`` None)."""

    tenant: str | None
    csrf: str

    @property
    def admin(self) -> bool:
        return self.tenant is None


def _stored_key(token: str) -> str:
    return keys.console_session(hashlib.sha256(token.encode()).hexdigest())


async def open_session(redis: Redis, tenant: str | None, ttl_s: int) -> str:
    """Store a new session and return the cookie's token."""
    token = secrets.token_urlsafe(32)
    key = _stored_key(token)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping={"tenant": tenant or "", "csrf": secrets.token_urlsafe(32)})
        pipe.expire(key, ttl_s)
        await pipe.execute()
    return token


async def read_session(redis: Redis, token: str | None) -> Session | None:
    """The session a cookie names, or None (no cookie, expired, signed out)."""
    if not token or len(token) > 128:
        return None
    raw: dict[bytes, bytes] = await redis.hgetall(_stored_key(token))  # type: ignore[misc]
    if not raw or b"csrf" not in raw:
        return None
    tenant = raw.get(b"tenant", b"").decode()
    return Session(tenant=tenant or None, csrf=raw[b"csrf"].decode())


async def close_session(redis: Redis, token: str) -> None:
    await redis.delete(_stored_key(token))


def tokens_match(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a submitted CSRF token with the expected one."""
    return bool(given) and hmac.compare_digest((given or "").encode(), expected.encode())


def check_csrf(session: Session, given: str | None) -> None:
    """Refuse a state change whose form did not carry the session's CSRF token."""
    if not tokens_match(given, session.csrf):
        raise Forbidden("missing or wrong CSRF token: reload the page and try again", "csrf")


def cookie_secure(request: Request, settings: Settings) -> bool:
    """Secure cookies over HTTPS, and always when ``console.secure_cookie`` says a proxy ends TLS."""
    return settings.console.secure_cookie or request.url.scheme == "https"
