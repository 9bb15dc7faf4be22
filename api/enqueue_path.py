"""POST /v1/jobs, served ahead of FastAPI's routing: the single enqueue is the API's hot path.

Routing, the ``Request`` object, dependency solving and the response wrappers cost about as much
server time per enqueue as the work itself. This pure ASGI middleware answers that one operation
with the same steps as the declared route (api/jobs.py ``enqueue``, which keeps documenting it in
the OpenAPI document): the tenant from the ``Authorization`` header, the body read under the byte
limit, ``jobs.enqueue_one``. Errors go to the same handlers (api/errors.py); an unexpected one
propagates to Starlette's outermost middleware, as it would from a route. Everything else passes
through untouched.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from api.auth import tenant_of
from api.body import read_json_asgi
from api.errors import handler_for
from api.jobs import IntakeTrace, enqueue_one
from api.responses import JsonResponse
from config.settings import Settings

PATH = "/v1/jobs"
_JSON_HEADERS = (b"content-type", b"application/json")
# The request headers the enqueue reads; the first of each wins, as in Starlette's ``Headers.get``.
_READ = frozenset({b"authorization", b"content-length", b"idempotency-key", b"traceparent", b"tracestate"})


def _headers(scope: Scope) -> dict[bytes, str]:
    found: dict[bytes, str] = {}
    for name, value in scope["headers"]:
        if name in _READ and name not in found:
            found[name] = value.decode("latin-1")
    return found


class EnqueueFastPath:
    """Answers ``POST /v1/jobs`` itself; passes every other request to ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        state = scope["app"].state
        headers = _headers(scope)
        try:
            settings: Settings = state.settings
            tenant_name = tenant_of(settings, headers.get(b"authorization", ""))
            limit = settings.limits.max_body_bytes
            view = await enqueue_one(
                state,
                tenant_name,
                headers.get(b"idempotency-key"),
                lambda: read_json_asgi(receive, headers.get(b"content-length"), limit),
                IntakeTrace(PATH, headers.get(b"traceparent"), headers.get(b"tracestate")),
            )
        except Exception as exc:
            handler = handler_for(exc)
            if handler is None:
                raise
            response = await handler(Request(scope, receive), exc)
            await response(scope, receive, send)
            return
        body = JsonResponse.render_content(view)
        await send(
            {
                "type": "http.response.start",
                "status": 202,
                "headers": [(b"content-length", str(len(body)).encode()), _JSON_HEADERS],
            }
        )
        await send({"type": "http.response.body", "body": body})
