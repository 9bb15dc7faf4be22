"""The emulator's ASGI app: both providers' routes behind the gate, plus the ``/_emulator`` admin routes."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response

from emulator import anthropic_routes, azure_routes, events, gemini_routes, openai_routes
from emulator.faults import ConfigError
from emulator.gate import Gate
from emulator.responses import EmulatorError, error_response, json_response
from emulator.state import EmulatorState


def create_app(config: dict[str, Any] | None = None, api_key: str | None = None) -> FastAPI:
    """A fresh emulator with its own in-memory state.

    Args:
        config: fault and timing settings (see :mod:`emulator`), merged into the defaults;
            ``POST /_emulator/reset`` returns to them.
        api_key: the only key accepted; None accepts any non-empty key.
    """
    state = EmulatorState(config, api_key)
    app = FastAPI(title="batchshift provider emulator", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.emulator = state
    app.include_router(openai_routes.router)
    app.include_router(anthropic_routes.router)
    app.include_router(azure_routes.router)
    app.include_router(gemini_routes.router)

    @app.exception_handler(EmulatorError)
    async def _provider_error(request: Request, exc: EmulatorError) -> Response:
        return error_response(exc)

    @app.get("/_emulator/config")
    async def get_config() -> Response:
        return json_response(state.config)

    @app.post("/_emulator/config")
    async def set_config(request: Request) -> Response:
        try:
            patch = orjson.loads(await request.body())
            if not isinstance(patch, dict):
                raise ConfigError("the body must be a JSON object")
            return json_response(state.configure(patch))
        except (orjson.JSONDecodeError, ConfigError) as exc:
            return json_response({"error": str(exc)}, status=400)

    @app.post("/_emulator/clock")
    async def set_clock(request: Request) -> Response:
        body = orjson.loads(await request.body() or b"{}")
        now = body.get("now") if isinstance(body, dict) else None
        if now is not None and (isinstance(now, bool) or not isinstance(now, int | float)):
            return json_response(
                {"error": "'now' must be epoch seconds or null (the wall clock)"}, status=400
            )
        state.fixed_now = None if now is None else float(now)
        return json_response({"now": state.now(), "fixed": state.fixed_now is not None})

    @app.get("/_emulator/requests")
    async def get_requests() -> Response:
        return json_response(list(state.requests))

    @app.get("/_emulator/events")
    async def get_events() -> Response:
        return json_response(events.watcher(state).sent)

    @app.post("/_emulator/reset")
    async def reset() -> Response:
        state.reset()
        events.watcher(state).forget()
        return json_response({"ok": True})

    @app.get("/_emulator/health")
    async def health() -> Response:
        return json_response({"ok": True})

    app.add_middleware(Gate, state=state)
    return app
