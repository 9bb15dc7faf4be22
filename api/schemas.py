"""The API's request and response shapes, for OpenAPI only.

Routes parse bodies themselves (orjson, then scheduler.intake's cheap checks) so bulk intake pays
no per-item model cost; these models describe the same contract in ``/openapi.json``. A test
checks that real answers validate against them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

if TYPE_CHECKING:
    from fastapi import FastAPI


class JobRequest(BaseModel):
    """One job to enqueue."""

    provider: str = Field(description="A configured provider name.")
    endpoint: str | None = Field(
        default=None,
        description="Default /v1/chat/completions (openai) or /v1/messages (anthropic); "
        "openai also serves /v1/embeddings and /v1/responses.",
    )
    body: dict[str, Any] = Field(description="The provider-native request body, with `model`; no `stream`.")
    deadline: str | None = Field(default=None, description="RFC 3339 timestamp with offset.")
    deadline_in: float | None = Field(
        default=None, gt=0, description="Seconds from now (instead of deadline)."
    )
    callback_url: str | None = Field(default=None, description="http(s) URL called when the job ends.")
    idempotency_key: str | None = Field(default=None, description="Or the Idempotency-Key header.")
    tags: dict[str, str] = Field(default_factory=dict, description="Cost tags; `feature` is conventional.")


class BulkRequest(BaseModel):
    """Many jobs in one request; each is validated and stored on its own."""

    jobs: list[JobRequest]


class ReplayRequest(BaseModel):
    """Dead-lettered deliveries to send again: exactly one of ``ids`` or ``since``."""

    ids: list[str] | None = Field(default=None, description="Delivery ids (at most 1,000).")
    since: str | None = Field(default=None, description="RFC 3339: every delivery dead since then.")


class ErrorDetail(BaseModel):
    type: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    """Every non-2xx answer."""

    error: ErrorDetail


class JobView(BaseModel):
    """A job as the API and completion webhooks show it."""

    id: str
    status: Literal["queued", "batched", "sync", "succeeded", "failed", "cancelled"]
    route: Literal["batch", "flex", "sync"] | None
    provider: str
    endpoint: str
    model: str
    lane: str
    deadline: str
    created_at: str
    completed_at: str | None
    tags: dict[str, str]
    callback_url: str | None
    attempts: int
    result: Any = Field(description="The provider-native response; null in listings and once retention ends.")
    error: dict[str, Any] | None
    usage: dict[str, Any] | None
    cost: dict[str, Any] | None
    deduplicated_with: str | None = Field(
        default=None, description="The identical job whose provider call answered this one (deduplication)."
    )


class BulkEntry(BaseModel):
    """One bulk item's outcome, at the item's position: ``job`` or ``error``."""

    status: int = Field(description="The status a single POST /v1/jobs would have answered.")
    job: JobView | None = None
    error: ErrorDetail | None = None


class BulkResponse(BaseModel):
    results: list[BulkEntry]


class JobList(BaseModel):
    """A page of the tenant's jobs, newest first."""

    data: list[JobView]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at the end.")


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads its JSON body itself."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def document(app: FastAPI) -> None:
    """Make ``/openapi.json`` include the request models the routes reference by name."""
    # Imported here, so the Python client (batchshift.client reads JobView) does not load FastAPI.
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            _, defs = models_json_schema(
                [(JobRequest, "validation"), (BulkRequest, "validation"), (ReplayRequest, "validation")],
                ref_template="#/components/schemas/{model}",
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
