"""The async Python client of the batchshift API, over httpx.

    async with BatchshiftClient("http://localhost:8000", api_key) as bs:
        job = await bs.enqueue("openai", {"model": "gpt-4o-mini", "messages": [...]}, deadline_in=3600)
        done = await bs.wait(job.id)

Errors mirror the API's (one class per error type, all under ``BatchshiftClientError``):

    BatchshiftClientError
     ├── TransportError             the API could not be reached (connection, timeout)
     ├── WaitTimeout                wait() gave up before the job ended (also a TimeoutError)
     └── ApiError                   the API answered with an error: status, type, message, field
          ├── InvalidRequest        400/422
          │    └── MalformedJSON    400
          ├── Unauthorized          401
          ├── BudgetExceeded        402
          ├── Forbidden             403
          ├── NotFound              404
          ├── Conflict              409
          │    ├── IdempotencyConflict
          │    └── IllegalTransition
          ├── PayloadTooLarge       413
          └── ServerError           5xx

Every class pickles (constructor arguments go to ``super().__init__``).
"""

from __future__ import annotations

import builtins
import re
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Final, Self, TypedDict, Unpack

import httpx
import orjson
from pydantic import ConfigDict

from api.schemas import JobView

TERMINAL: Final = frozenset({"succeeded", "failed", "cancelled"})
BULK_CHUNK = 1_000  # items per POST /v1/jobs/bulk: big enough to amortise, small enough to retry
SERVER_MAX_WAIT_S = 60.0  # the API's default limits.max_wait_s; wait() long-polls in slices of this
# How the API's 422 for a too-long wait states its limit ("... at most 30 seconds").
_MAX_WAIT_IN_MESSAGE = re.compile(r"at most ([0-9][0-9.e+-]*) seconds")


class BatchshiftClientError(Exception):
    """Raised for any failure of a client call."""


class TransportError(BatchshiftClientError):
    """Raised when the API could not be reached or did not answer in time."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class WaitTimeout(BatchshiftClientError, TimeoutError):
    """Raised when ``wait()`` gives up before the job ends."""

    def __init__(self, job_id: str, timeout_s: float) -> None:
        super().__init__(job_id, timeout_s)
        self.job_id, self.timeout_s = job_id, timeout_s

    def __str__(self) -> str:
        return f"job {self.job_id} did not end within {self.timeout_s:g} s"


class ApiError(BatchshiftClientError):
    """Raised when the API answers with an error."""

    def __init__(self, status_code: int, error_type: str, message: str, field: str | None = None) -> None:
        super().__init__(status_code, error_type, message, field)
        self.status_code, self.error_type, self.message, self.field = status_code, error_type, message, field

    def __str__(self) -> str:
        where = f" ({self.field})" if self.field else ""
        return f"{self.status_code} {self.error_type}{where}: {self.message}"


class InvalidRequest(ApiError):
    """Raised when a request field is missing or wrong (the field is named)."""


class MalformedJSON(InvalidRequest):
    """Raised when the API could not parse the request body as JSON."""


class Unauthorized(ApiError):
    """Raised when the API key is missing or unknown."""


class BudgetExceeded(ApiError):
    """Raised when the tenant's budget is spent."""


class Forbidden(ApiError):
    """Raised when the key may not do this."""


class NotFound(ApiError):
    """Raised when the job does not exist (or is another tenant's)."""


class Conflict(ApiError):
    """Raised when the request conflicts with what is stored."""


class IdempotencyConflict(Conflict):
    """Raised when an idempotency key was used for a different request."""


class IllegalTransition(Conflict):
    """Raised when the job's state does not allow the change (e.g. cancelling an ended job)."""


class PayloadTooLarge(ApiError):
    """Raised when a body or a bulk request is over the API's limit."""


class ServerError(ApiError):
    """Raised when the API failed (5xx)."""


_BY_TYPE: Final[dict[str, type[ApiError]]] = {
    "invalid_request": InvalidRequest,
    "malformed_json": MalformedJSON,
    "unauthorized": Unauthorized,
    "budget_exceeded": BudgetExceeded,
    "forbidden": Forbidden,
    "not_found": NotFound,
    "conflict": Conflict,
    "idempotency_conflict": IdempotencyConflict,
    "illegal_transition": IllegalTransition,
    "payload_too_large": PayloadTooLarge,
}
_BY_STATUS: Final[dict[int, type[ApiError]]] = {
    400: InvalidRequest,
    401: Unauthorized,
    402: BudgetExceeded,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: InvalidRequest,
}


def server_max_wait(error: ApiError, asked_s: float) -> float | None:
    """The shorter long poll a server asks for when it refused ``wait=asked_s``, or None.

    A server configured with ``limits.max_wait_s`` under the default refuses longer waits with a
    422 on ``wait`` that states its limit; without a readable limit, half the slice is tried.
    """
    if not isinstance(error, InvalidRequest) or error.field != "wait":
        return None
    match = _MAX_WAIT_IN_MESSAGE.search(error.message)
    try:
        limit = float(match.group(1)) if match else asked_s / 2
    except ValueError:
        limit = asked_s / 2
    return limit if 0 < limit < asked_s else None


def api_error(status_code: int, error: Mapping[str, Any] | None) -> ApiError:
    """The typed error for an API error body (``{"type", "message", "field"}``)."""
    error = error or {}
    error_type = str(error.get("type") or "http_error")
    cls = _BY_TYPE.get(error_type) or _BY_STATUS.get(status_code)
    if cls is None:
        cls = ServerError if status_code >= 500 else ApiError
    return cls(
        status_code, error_type, str(error.get("message") or f"HTTP {status_code}"), error.get("field")
    )


class Job(JobView):
    """A job as the API shows it (the API's own :class:`api.schemas.JobView`, read back).

    Fields the server adds later are kept (``extra="allow"``) and show in ``data``.
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    @classmethod
    def from_view(cls, view: Mapping[str, Any]) -> Job:
        return cls.model_validate(view)

    @property
    def data(self) -> dict[str, Any]:
        """The whole view, as the API sent it."""
        return self.model_dump()

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True, slots=True)
class Page:
    """One page of ``list()``; pass ``next_cursor`` back for the next."""

    jobs: builtins.list[Job]
    next_cursor: str | None


class JobFields(TypedDict, total=False):
    """A job request's optional fields, as ``job_request`` and ``enqueue`` take them."""

    endpoint: str | None
    deadline: datetime | str | None
    deadline_in: float | None
    callback_url: str | None
    tags: Mapping[str, str] | None
    idempotency_key: str | None


def job_request(provider: str, body: Mapping[str, Any], **fields: Unpack[JobFields]) -> dict[str, Any]:
    """One job as the API's request JSON (also what ``enqueue_many`` takes per item)."""
    request: dict[str, Any] = {"provider": provider, "body": dict(body)}
    for name, value in fields.items():
        if isinstance(value, datetime):
            request[name] = value.isoformat()
        elif isinstance(value, Mapping):
            if value:  # no tags: the field is left out
                request[name] = dict(value)
        elif value is not None:
            request[name] = value
    return request


class BatchshiftClient:
    """An async client for one tenant (or the admin). Use it as ``async with``; it holds one connection pool."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 30.0) -> None:
        self._timeout_s = timeout
        self._max_wait_s = SERVER_MAX_WAIT_S  # lowered when the server refuses a longer long poll
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"authorization": f"Bearer {api_key}", "user-agent": "batchshift-client"},
            timeout=httpx.Timeout(timeout),
        )

    def __repr__(self) -> str:
        return f"BatchshiftClient({str(self._http.base_url)!r})"  # never the key

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        payload: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        request_timeout: float | None = None,
    ) -> Any:
        content = orjson.dumps(payload) if payload is not None else None
        all_headers = (
            {"content-type": "application/json", **(headers or {})} if content else dict(headers or {})
        )
        try:
            response = await self._http.request(
                method,
                path,
                content=content,
                params={k: v for k, v in (params or {}).items() if v is not None},
                headers=all_headers,
                timeout=httpx.Timeout(request_timeout) if request_timeout else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.HTTPError as exc:
            raise TransportError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        try:
            data = orjson.loads(response.content) if response.content else None
        except orjson.JSONDecodeError:
            data = None
        if response.is_error:
            error = data.get("error") if isinstance(data, dict) else None
            raise api_error(response.status_code, error)
        return data

    async def enqueue(self, provider: str, body: Mapping[str, Any], **fields: Unpack[JobFields]) -> Job:
        """Enqueue one job; with ``idempotency_key`` a retry returns the same job."""
        request = job_request(provider, body, **fields)
        return Job.from_view(await self._call("POST", "/v1/jobs", payload=request))

    async def enqueue_many(
        self, jobs: Iterable[Mapping[str, Any]], *, chunk_size: int = BULK_CHUNK
    ) -> builtins.list[Job | ApiError]:
        """Enqueue many jobs (each as ``job_request`` builds it) in bulk requests of ``chunk_size``.

        Returns one entry per job, in order: the Job, or the ApiError that job alone got.
        """
        items = [dict(job) for job in jobs]
        out: builtins.list[Job | ApiError] = []
        for start in range(0, len(items), chunk_size):
            reply = await self._call(
                "POST", "/v1/jobs/bulk", payload={"jobs": items[start : start + chunk_size]}
            )
            for entry in reply["results"]:
                if "job" in entry:
                    out.append(Job.from_view(entry["job"]))
                else:
                    out.append(api_error(int(entry.get("status", 422)), entry.get("error")))
        return out

    async def get(self, job_id: str, *, wait: float | None = None) -> Job:
        """The job; with ``wait`` (seconds, at most the API's max) the API answers as soon as it ends."""
        timeout = self._timeout_s + wait if wait else None
        view = await self._call("GET", f"/v1/jobs/{job_id}", params={"wait": wait}, request_timeout=timeout)
        return Job.from_view(view)

    async def wait(self, job_id: str, *, timeout: float | None = None) -> Job:  # noqa: ASYNC109
        """Long-poll until the job ends; raise WaitTimeout after ``timeout`` seconds (None: no limit)."""
        # A timeout argument rather than asyncio.timeout: WaitTimeout names the job, and each long
        # poll must know how long it may still wait.
        give_up = None if timeout is None else time.monotonic() + timeout
        while True:
            slice_s = self._max_wait_s
            if give_up is not None:
                slice_s = min(slice_s, give_up - time.monotonic())
                if slice_s <= 0:
                    raise WaitTimeout(job_id, timeout or 0.0)
            try:
                job = await self.get(job_id, wait=slice_s)
            except InvalidRequest as exc:
                limit = server_max_wait(exc, slice_s)
                if limit is None:
                    raise
                self._max_wait_s = limit
                continue
            if job.terminal:
                return job

    async def cancel(self, job_id: str) -> Job:
        """Cancel a job that has not ended; IllegalTransition when it has."""
        return Job.from_view(await self._call("POST", f"/v1/jobs/{job_id}/cancel"))

    async def list(
        self,
        *,
        status: str | None = None,
        feature: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """One page of the tenant's jobs, newest first."""
        params = {"status": status, "feature": feature, "limit": limit, "cursor": cursor}
        reply = await self._call("GET", "/v1/jobs", params=params)
        return Page([Job.from_view(v) for v in reply["data"]], reply.get("next_cursor"))

    async def iter_jobs(
        self, *, status: str | None = None, feature: str | None = None, page_size: int = 200
    ) -> AsyncIterator[Job]:
        """Every job of the tenant, newest first, page after page."""
        cursor: str | None = None
        while True:
            page = await self.list(status=status, feature=feature, limit=page_size, cursor=cursor)
            for job in page.jobs:
                yield job
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def costs(
        self, *, group_by: str = "tenant", start: str | None = None, end: str | None = None
    ) -> dict[str, Any]:
        """The cost and savings report (``GET /v1/costs``), grouped; ``start``/``end`` are UTC days."""
        params = {"group_by": group_by, "from": start, "to": end}
        report: dict[str, Any] = await self._call("GET", "/v1/costs", params=params)
        return report

    async def lanes(self) -> builtins.list[dict[str, Any]]:
        """Every lane's health, queue and on-time SLO (``GET /v1/lanes``, admin key)."""
        reply = await self._call("GET", "/v1/lanes")
        lanes: builtins.list[dict[str, Any]] = reply["data"]
        return lanes
