"""The error shapes of the compatible endpoints, so the ``openai`` and ``anthropic`` SDKs raise their
own exceptions: OpenAI's ``{"error": {"message", "type", "param", "code"}}`` under ``/v1/files`` and
``/v1/batches``, Anthropic's ``{"type": "error", "error": {"type", "message"}}`` under
``/v1/messages/batches``. Both answer a bad field with 400, as the providers do (not our 422);
OpenAI answers a refused state change (cancelling a completed batch) with 409, Anthropic with 400.
"""

from __future__ import annotations

from typing import Any, Final, Literal

Shape = Literal["openai", "anthropic"]

OPENAI_PREFIXES: Final = ("/v1/files", "/v1/batches")
ANTHROPIC_PREFIX: Final = "/v1/messages/batches"

_ANTHROPIC_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}
_OPENAI_CODES: Final = {401: "invalid_api_key", 402: "insufficient_quota"}


def shape_of(path: str) -> Shape | None:
    """Which provider's error shape a path answers with, or None for batchshift's own."""
    if path == ANTHROPIC_PREFIX or path.startswith(ANTHROPIC_PREFIX + "/"):
        return "anthropic"
    if any(path == p or path.startswith(p + "/") for p in OPENAI_PREFIXES):
        return "openai"
    return None


def compat_status(shape: Shape, status: int) -> int:
    """Providers answer field errors with 400; OpenAI keeps 409 for a refused state change (its SDK
    raises ``ConflictError`` on ``Cannot cancel a batch with status 'completed'.``)."""
    if status == 422 or (status == 409 and shape == "anthropic"):
        return 400
    return status


def compat_body(
    shape: Shape, status: int, message: str, field: str | None, code: str | None = None
) -> dict[str, Any]:
    """The provider's error body for a (compat) ``status``."""
    if shape == "anthropic":
        return {
            "type": "error",
            "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message},
        }
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {
        "error": {"message": message, "type": kind, "param": field, "code": code or _OPENAI_CODES.get(status)}
    }
