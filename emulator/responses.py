"""How the emulator answers: JSON responses and the providers' error shapes."""

from __future__ import annotations

import math
from typing import Any, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response

from emulator import gemini_batch, outputs
from emulator.state import EmulatorState

ANTHROPIC_PREFIX = "/v1/messages"
GEMINI_PREFIXES = ("/v1beta/", "/upload/v1beta/", "/download/v1beta/")
T = TypeVar("T")


class EmulatorError(Exception):
    """Raised by a route to answer with a provider-shaped error."""

    def __init__(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, body, headers)
        self.status = status
        self.body = body
        self.headers = headers or {}


def emulator_state(request: Request) -> EmulatorState:
    """The state of the emulator serving ``request``."""
    state: EmulatorState = request.app.state.emulator
    return state


async def json_body(request: Request, invalid: str) -> Any:
    """The request's JSON body; one that does not parse is a 400 with the provider's ``invalid`` message."""
    try:
        return orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise error(request.url.path, 400, invalid) from exc


def found(request: Request, value: T | None, message: str) -> T:
    """``value``, or the provider's 404 with ``message`` when the lookup found nothing."""
    if value is None:
        raise error(request.url.path, 404, message)
    return value


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type="application/json")


def is_anthropic(path: str) -> bool:
    """Whether a path belongs to the Anthropic API (everything else under /v1 is OpenAI's)."""
    return path == ANTHROPIC_PREFIX or path.startswith(ANTHROPIC_PREFIX + "/")


def is_gemini(path: str) -> bool:
    """Whether a path belongs to the Gemini API (its version path is v1beta)."""
    return path.startswith(GEMINI_PREFIXES)


def retry_headers(seconds: float) -> dict[str, str]:
    """``retry-after`` (whole seconds, as providers send it) and the precise ``retry-after-ms``."""
    return {"retry-after": str(math.ceil(seconds)), "retry-after-ms": str(round(seconds * 1000))}


_OPENAI_STATUS = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    404: ("invalid_request_error", None, "Not found."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again later."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", "overloaded", "The engine is currently overloaded, please try again later."),
}


def error(path: str, status: int, message: str | None = None, *, code: str | None = None) -> EmulatorError:
    """The error a provider would send for ``status`` on ``path``, in that provider's shape."""
    if is_anthropic(path):
        default = {429: "Number of requests has exceeded your rate limit.", 529: "Overloaded"}
        text = message or default.get(status, "Emulated error." if status < 500 else "Internal server error")
        return EmulatorError(status, outputs.anthropic_error(status, text))
    if is_gemini(path):
        status = 503 if status == 529 else status  # Gemini's overload answer is a 503 UNAVAILABLE
        return EmulatorError(status, gemini_batch.error_body(status, message))
    if status == 529:  # OpenAI has no 529; its overload answer is a 503
        status = 503
    err_type, default_code, default_message = _OPENAI_STATUS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None, "Emulated error.")
    )
    body = outputs.openai_error(status, message or default_message, err_type, code or default_code)
    return EmulatorError(status, body)


def error_response(exc: EmulatorError) -> Response:
    return Response(exc.body, status_code=exc.status, media_type="application/json", headers=exc.headers)
