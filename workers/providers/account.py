"""What both adapters share: one provider account's URL, auth headers, timeouts and call wrappers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson

from config.settings import ProviderSettings
from config.tracing import phase
from workers import http
from workers.errors import (
    BatchCreateUnknown,
    MalformedResponse,
    ResponseTimeout,
    ServerError,
)


class ProviderAccount:
    """A configured provider account on the process's shared HTTP client."""

    def __init__(
        self, name: str, settings: ProviderSettings, client: httpx.AsyncClient, *, default_auth_header: str
    ) -> None:
        self.name = name
        self.kind: str = settings.kind
        self.settings = settings
        self.client = client
        self.base = settings.base_url + settings.path_prefix
        self.request_limit = settings.batch_request_limit()
        self.byte_limit = settings.batch_byte_limit()
        self.timeout = http.timeout_for(settings.http)
        header = settings.auth_header or default_auth_header
        scheme = settings.auth_scheme or ("Bearer" if header.lower() == "authorization" else None)
        key = settings.api_key.get_secret_value()
        self.headers = {header: f"{scheme} {key}" if scheme else key}

    def url(self, path: str) -> str:
        return self.base + path

    async def call(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool,
        max_retries: int | None = None,
        headers: dict[str, str] | None = None,
        read_timeout: float | None = None,
        **request: Any,
    ) -> httpx.Response:
        """One call to the provider, retried as :func:`workers.http.retry_delay` allows; ``read_timeout``
        replaces the provider's for this call (sync calls wait longer than batch API calls)."""
        timeout = self.timeout
        if read_timeout is not None:
            timeout = httpx.Timeout(
                connect=timeout.connect, read=read_timeout, write=timeout.write, pool=timeout.pool
            )
        return await http.send(
            self.client,
            method,
            self.url(path),
            http=self.settings.http,
            idempotent=idempotent,
            max_retries=max_retries,
            headers={**self.headers, **(headers or {})},
            timeout=timeout,
            **request,
        )

    async def call_json(self, method: str, path: str, *, idempotent: bool, **request: Any) -> dict[str, Any]:
        response = await self.call(method, path, idempotent=idempotent, **request)
        return parse_object(response.content, f"{method} {path}")

    async def list_objects(
        self, path: str, *, limit: int, page_size: int, cursor: str
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` objects of a cursor-paginated list, newest first; ``cursor`` names the
        query parameter that takes the last id seen (OpenAI ``after``, Anthropic ``after_id``)."""
        found: list[dict[str, Any]] = []
        params: dict[str, str | int] = {}
        while len(found) < limit:
            params["limit"] = min(page_size, limit - len(found))
            page = await self.call_json("GET", path, idempotent=True, params=params)
            data = page.get("data") or []
            found.extend(data)
            if not page.get("has_more") or not data:
                break
            params[cursor] = data[-1]["id"]
        return found[:limit]

    async def create(self, path: str, batch_id: str, **request: Any) -> dict[str, Any]:
        """A batch create: answers that leave its outcome unknown become BatchCreateUnknown.

        Not retried once it may have reached the provider: a timeout after sending, or a 5xx,
        could hide a created batch, and a blind retry could create a second one.
        """
        try:
            with phase("batch.create"):
                return await self.call_json("POST", path, idempotent=False, **request)
        except (ResponseTimeout, ServerError) as exc:
            raise BatchCreateUnknown(batch_id, str(exc)) from exc

    @asynccontextmanager
    async def stream(self, path: str, **request: Any) -> AsyncIterator[httpx.Response]:
        """A streamed idempotent GET."""
        async with http.open_stream(
            self.client,
            "GET",
            self.url(path),
            http=self.settings.http,
            headers={**self.headers, **request.pop("headers", {})},
            timeout=self.timeout,
            **request,
        ) as response:
            yield response


def parse_object(content: bytes, what: str) -> dict[str, Any]:
    """A JSON object from a provider's answer, or MalformedResponse."""
    try:
        doc = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise MalformedResponse(f"{what}: answer is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise MalformedResponse(f"{what}: answer is not a JSON object")
    return doc


def with_service_tier(body: bytes, service_tier: str | None) -> bytes:
    """The request body with ``service_tier`` set, or unchanged when none is asked for."""
    if service_tier is None:
        return body
    doc = parse_object(body, "sync request body")
    doc["service_tier"] = service_tier
    return orjson.dumps(doc)
