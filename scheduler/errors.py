"""The scheduler package's exceptions: one tree. Each ``BatchshiftError`` maps to one API answer.

    SchedulerError                  root of every error the scheduler raises
     ├── BatchshiftError            an answer the API gives (status code and error body)
     │    ├── InvalidRequest          400/422: a field is wrong (names the field)
     │    │    └── MalformedJSON      400: the body is not JSON
     │    ├── SignatureRefused        400: a provider event's webhook signature does not verify
     │    ├── PayloadTooLarge         413: body or bulk over its limit
     │    ├── Unauthorized            401: no or unknown API key
     │    ├── Forbidden               403: the key may not do this (admin endpoints)
     │    ├── NotFound                404: no such job (or another tenant's)
     │    ├── Conflict                409
     │    │    ├── IdempotencyConflict   a key reused with a different request
     │    │    └── IllegalTransition     a state change from a state that does not allow it
     │    └── BudgetExceeded          402: the tenant's budget is spent
     ├── Fenced                     a leader write refused: the fencing token is no longer current
     ├── UnknownProvider            a lane names a provider that is not configured (a LookupError)
     ├── InvalidCron                a cron expression or time zone does not parse (a ValueError)
     └── TaskFailed                 an arq task raised: its exception's class name and message

Every class pickles (copies, multiprocessing; arq carries a failed task's exception as msgpack, see
``scheduler.ledger.tasks``): constructor arguments go to
``super().__init__`` and the message is formatted in ``__str__``.
"""

from __future__ import annotations


class SchedulerError(Exception):
    """Root of every error raised by ``scheduler``."""


class BatchshiftError(SchedulerError):
    """Raised when a request fails in a way a caller can act on; the API answers with its status and body."""

    status_code = 500
    error_type = "internal_error"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message, field)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message

    def to_dict(self) -> dict[str, str | None]:
        """The API's error body: ``{"error": {"type", "message", "field"}}``."""
        return {"type": self.error_type, "message": self.message, "field": self.field}


class InvalidRequest(BatchshiftError):
    """Raised when a request field is missing or wrong."""

    status_code = 422
    error_type = "invalid_request"


class MalformedJSON(InvalidRequest):
    """Raised when a request body is not valid JSON."""

    status_code = 400
    error_type = "malformed_json"


class SignatureRefused(BatchshiftError):
    """Raised when a provider event's Standard Webhooks headers do not verify (the message says which check)."""

    status_code = 400
    error_type = "invalid_signature"


class PayloadTooLarge(BatchshiftError):
    """Raised when a body or a bulk request is over its configured limit."""

    status_code = 413
    error_type = "payload_too_large"


class Unauthorized(BatchshiftError):
    """Raised when the API key is missing or unknown."""

    status_code = 401
    error_type = "unauthorized"


class Forbidden(BatchshiftError):
    """Raised when a valid key asks for something only the admin key may do."""

    status_code = 403
    error_type = "forbidden"


class NotFound(BatchshiftError):
    """Raised when a job does not exist or belongs to another tenant."""

    status_code = 404
    error_type = "not_found"


class Conflict(BatchshiftError):
    """Raised when the request conflicts with what is stored."""

    status_code = 409
    error_type = "conflict"


class IdempotencyConflict(Conflict):
    """Raised when an idempotency key is reused with a different request."""

    error_type = "idempotency_conflict"


class IllegalTransition(Conflict):
    """Raised when a job is asked to change state from a state that does not allow it."""

    error_type = "illegal_transition"


class BudgetExceeded(BatchshiftError):
    """Raised when a tenant's budget is spent and its policy is to reject new jobs."""

    status_code = 402
    error_type = "budget_exceeded"


class Fenced(SchedulerError):
    """Raised when a leader write (a reserve, an alert, a snapshot) is refused: the fencing token is stale."""

    def __init__(self, token: int) -> None:
        super().__init__(token)
        self.token = token

    def __str__(self) -> str:
        return f"fencing token {self.token} is no longer current"


class UnknownProvider(SchedulerError, LookupError):
    """Raised when a lane names a provider that is not configured."""

    def __init__(self, lane: str, provider: str) -> None:
        super().__init__(lane, provider)
        self.lane = lane
        self.provider = provider

    def __str__(self) -> str:
        return f"lane {self.lane}: provider {self.provider!r} is not configured"


class InvalidCron(SchedulerError, ValueError):
    """Raised when a cron expression or time zone does not parse; the message names it."""

    def __init__(self, expression: str, reason: str) -> None:
        super().__init__(expression, reason)
        self.expression = expression
        self.reason = reason

    def __str__(self) -> str:
        return f"cron {self.expression!r}: {self.reason}"


class TaskFailed(SchedulerError):
    """Raised when ``Job.result()`` reads a task that raised: its exception's class name and message."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(error_type, message)
        self.error_type = error_type
        self.message = message

    def __str__(self) -> str:
        return f"{self.error_type}: {self.message}"
