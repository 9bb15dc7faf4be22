"""The emulator's front door (pure ASGI middleware): request log, provider auth, injected faults."""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from emulator import faults
from emulator.responses import (
    EmulatorError,
    error,
    error_response,
    is_anthropic,
    is_gemini,
    retry_headers,
)
from emulator.state import EmulatorState

ADMIN_PREFIX = "/_emulator"


class Gate:
    """Logs every call, refuses what the provider would refuse, and injects configured faults."""

    def __init__(self, app: ASGIApp, state: EmulatorState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        entry: dict[str, Any] = {
            "t": time.time(),
            "method": method,
            "path": path,
            "query": scope["query_string"].decode("latin-1"),
            "status": None,
        }
        if not path.startswith(ADMIN_PREFIX):
            self.state.requests.append(entry)
        scope.setdefault("state", {})["log"] = entry

        async def logged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
            await send(message)

        refusal = None if path.startswith(ADMIN_PREFIX) else self._refusal(scope)
        if refusal is not None:
            await error_response(refusal)(scope, receive, logged_send)
            return
        await self.app(scope, receive, logged_send)

    def _refusal(self, scope: Scope) -> EmulatorError | None:
        path, method = scope["path"], scope["method"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._auth(path, headers, scope["query_string"].decode("latin-1"))
        if refusal is not None:
            return refusal
        status = faults.injected_status(self.state.config, self.state.rng, method, path)
        if status is None:
            return None
        refusal = error(path, status)
        if refusal.status in (429, 503, 529):
            refusal.headers.update(retry_headers(float(self.state.config["retry_after_s"])))
        return refusal

    def _auth(self, path: str, headers: dict[str, str], query: str) -> EmulatorError | None:
        if is_gemini(path):
            return self._gemini_auth(path, headers, query)
        bearer = headers.get("authorization", "")
        token = bearer[7:].strip() if bearer.lower().startswith("bearer ") else ""
        if is_anthropic(path):
            key = headers.get("x-api-key") or token
            if not key:
                return error(path, 401, "x-api-key header is required")
            if self.state.api_key is not None and key != self.state.api_key:
                return error(path, 401, "invalid x-api-key")
            if not headers.get("anthropic-version"):
                return error(path, 400, "anthropic-version: header is required")
            return None
        key = token or headers.get("api-key", "")
        if not key:
            return error(
                path,
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code="missing_api_key",
            )
        if self.state.api_key is not None and key != self.state.api_key:
            return error(path, 401, f"Incorrect API key provided: {_masked(key)}.", code="invalid_api_key")
        return None

    def _gemini_auth(self, path: str, headers: dict[str, str], query: str) -> EmulatorError | None:
        """``x-goog-api-key`` (or ``?key=``); a resumable upload's session URL is its own credential,
        as the SDK sends its chunks without the key."""
        params = dict(pair.partition("=")[::2] for pair in query.split("&") if pair)
        if path == "/upload/v1beta/files" and "upload_id" in params:
            return None
        key = headers.get("x-goog-api-key") or params.get("key", "")
        if not key:
            return error(path, 403, "Method doesn't allow unregistered callers. Please use an API Key.")
        if self.state.api_key is not None and key != self.state.api_key:
            return error(path, 400, "API key not valid. Please pass a valid API key.")
        return None


def _masked(key: str) -> str:
    return key[:3] + "*" * 8 + key[-4:] if len(key) > 8 else "*" * len(key)
