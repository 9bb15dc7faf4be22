"""Maps every failure to the API's one error shape: ``{"error": {"type", "message", "field"}}``.

Our own errors (scheduler.errors) carry their status; FastAPI's validation errors become 422
naming the field (400 when the body is not JSON); unknown routes and methods keep their status;
Redis out of reach, too slow (the client's socket timeout), out of memory (``OOM`` under
``noeviction``) or read-only (a replica, after a failover) is a 503 with ``Retry-After`` (the request
may be sent again as is; with an idempotency key nothing is doubled); anything else is a logged 500 that reveals nothing of the cause.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException

from api.compat_errors import compat_body, compat_status, shape_of
from api.responses import JsonResponse
from scheduler.errors import BatchshiftError, Unauthorized

log = structlog.get_logger(__name__)

# Locations FastAPI puts before the field's own path; the client cares about the field.
_LOCATION_PARTS = frozenset({"body", "query", "path", "header", "cookie"})


def error_body(error_type: str, message: str, field: str | None = None) -> dict[str, Any]:
    """The error envelope every non-2xx answer carries."""
    return {"error": {"type": error_type, "message": message, "field": field}}


def field_name(loc: Sequence[Any]) -> str | None:
    """A validation error location as a dotted field name (``jobs.3.body.model``)."""
    parts = [str(p) for p in loc if str(p) not in _LOCATION_PARTS]
    return ".".join(parts) or None


def _compat(request: Request, status: int, message: str, field: str | None) -> JsonResponse | None:
    """The answer in a provider's error shape on the compatible endpoints (api/compat_errors.py)."""
    shape = shape_of(request.url.path)
    if shape is None:
        return None
    status = compat_status(shape, status)
    return JsonResponse(compat_body(shape, status, message, field), status_code=status)


async def _batchshift_error(request: Request, exc: Exception) -> JsonResponse:
    assert isinstance(exc, BatchshiftError)
    headers = {"www-authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
    compat = _compat(request, exc.status_code, exc.message, exc.field)
    if compat is not None:
        compat.headers.update(headers or {})
        return compat
    return JsonResponse({"error": exc.to_dict()}, status_code=exc.status_code, headers=headers)


async def _validation_error(request: Request, exc: Exception) -> JsonResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        return JsonResponse(error_body("malformed_json", "request body is not valid JSON"), 400)
    field = field_name(first.get("loc", ()))
    message = str(first.get("msg", "invalid value"))
    if field:
        message = f"{field}: {message}"
    if (compat := _compat(request, 422, message, field)) is not None:
        return compat
    return JsonResponse(error_body("invalid_request", message, field), 422)


async def _http_error(request: Request, exc: Exception) -> JsonResponse:
    assert isinstance(exc, HTTPException)
    kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    if (compat := _compat(request, exc.status_code, str(exc.detail), None)) is not None:
        return compat
    return JsonResponse(error_body(kind, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)


# Seconds a client is told to wait before retrying while Redis is out of reach.
UNAVAILABLE_RETRY_AFTER_S = 1


async def _store_unavailable(request: Request, exc: Exception) -> JsonResponse:
    log.error("request.store_unavailable", path=request.url.path, error_class=type(exc).__name__)
    return JsonResponse(
        error_body("unavailable", "the job store is unavailable; retry the request"),
        503,
        headers={"retry-after": str(UNAVAILABLE_RETRY_AFTER_S)},
    )


# Error replies that say the store cannot serve us for now; Redis before 7 relays them from a Lua
# script inside an "ERR Error running script ..." reply, hence a search and not only a prefix.
_UNAVAILABLE_REPLIES = ("OOM ", "READONLY ", "MASTERDOWN ", "LOADING ", "BUSY ")


def store_unavailable(exc: BaseException) -> bool:
    """True when a Redis error means "not now" (retry later) rather than a bug of ours."""
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | OutOfMemoryError | ReadOnlyError):
        return True
    if isinstance(exc, ResponseError):
        message = str(exc)
        return any(message.startswith(reply) or f"-{reply}" in message for reply in _UNAVAILABLE_REPLIES)
    return False


async def _response_error(request: Request, exc: Exception) -> JsonResponse:
    if store_unavailable(exc):
        return await _store_unavailable(request, exc)
    return await _unexpected_error(request, exc)


async def _unexpected_error(request: Request, exc: Exception) -> JsonResponse:
    log.exception("request.failed", path=request.url.path, error_class=type(exc).__name__)
    return JsonResponse(error_body("internal_error", "internal error"), 500)


Handler = Callable[[Request, Exception], Awaitable[JsonResponse]]

# The handlers of errors a route may raise, by class. Anything else is ``_unexpected_error``'s,
# which Starlette runs in its outermost middleware (and then re-raises, for the server's log).
HANDLERS: dict[type[Exception], Handler] = {
    BatchshiftError: _batchshift_error,
    RequestValidationError: _validation_error,
    HTTPException: _http_error,
    RedisConnectionError: _store_unavailable,
    RedisTimeoutError: _store_unavailable,
    ResponseError: _response_error,
}


def handler_for(exc: Exception) -> Handler | None:
    """The handler of ``exc``'s nearest class in ``HANDLERS``, as Starlette looks it up; None for
    an unexpected error (left to propagate). For code that answers outside FastAPI's routing."""
    for cls in type(exc).__mro__:
        if cls in HANDLERS:
            return HANDLERS[cls]
    return None


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    for cls, handler in HANDLERS.items():
        app.add_exception_handler(cls, handler)
    app.add_exception_handler(Exception, _unexpected_error)
