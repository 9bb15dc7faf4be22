"""The adapter calls both providers make the same way: limits, spooling, get, list, cancel, results, sync.

A provider adapter (:mod:`workers.providers.openai`, :mod:`workers.providers.anthropic`) subclasses
:class:`BatchAdapter` and names what differs: its batch collection path, its batch input format, its
list paging, how it reads a batch object, and how its endpoints map to paths. What is left in each
provider's module is what the provider really does differently (file uploads, result sources).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any, ClassVar, TypedDict

import httpx

from config.settings import ProviderSettings
from workers.errors import BatchNotEnded, ProviderNotFound
from workers.providers import batch_input
from workers.providers.account import ProviderAccount, parse_object, with_service_tier
from workers.providers.base import BatchInfo, BatchLine, ResultLine, SyncResult, each_line
from workers.providers.batch_input import BatchInput

# Awaited right before a batch's create call (the submission lease stamps its start there).
BeforeCreate = Callable[[], Awaitable[None]] | None


class InputTerms(TypedDict):
    """What shapes a batch input besides its lines and format (batch_input.split and spool take them)."""

    endpoint: str
    request_limit: int
    byte_limit: int


class BatchAdapter:
    """One provider account, with the calls whose shape both providers share."""

    kind: str  # "openai" or "anthropic"
    batches_path: ClassVar[str]  # the batch collection, below base_url
    line_format: ClassVar[batch_input.BatchFormat]
    list_page: ClassVar[int]  # the provider's largest list page
    list_cursor: ClassVar[str]  # the list query parameter that takes the last id seen
    default_auth_header: ClassVar[str]
    # The provider's batch object, normalised (a staticmethod in each subclass).
    batch_info: Callable[[dict[str, Any]], BatchInfo]

    def __init__(self, name: str, settings: ProviderSettings, client: httpx.AsyncClient) -> None:
        self.account = ProviderAccount(name, settings, client, default_auth_header=self.default_auth_header)
        self.name = name
        self.request_limit = self.account.request_limit
        self.byte_limit = self.account.byte_limit

    def batch_endpoint(self, endpoint: str) -> str:
        """The endpoint as batch lines name it (as given, unless the provider spells it otherwise)."""
        return endpoint

    def sync_path(self, endpoint: str) -> str:
        """The endpoint's path below ``base_url`` (as given, unless base_url already holds part of it)."""
        return endpoint

    def line_size(self, line: BatchLine, *, endpoint: str) -> int:
        return self.line_format.size(line, self.batch_endpoint(endpoint))

    def split(self, lines: Iterable[BatchLine], *, endpoint: str) -> Iterator[list[BatchLine]]:
        return batch_input.split(lines, self.line_format, **self.input_terms(endpoint))

    def input_terms(self, endpoint: str) -> InputTerms:
        """The batch input's endpoint (as the provider spells it) and the provider's limits."""
        return {
            "endpoint": self.batch_endpoint(endpoint),
            "request_limit": self.request_limit,
            "byte_limit": self.byte_limit,
        }

    async def submit_batch(
        self,
        lines: AsyncIterable[BatchLine] | Iterable[BatchLine],
        *,
        endpoint: str,
        batch_id: str,
        before_create: BeforeCreate = None,
    ) -> BatchInfo:
        """Spool the lines (raising before anything is sent when they break a limit), then create."""
        spool = batch_input.spool(lines, self.line_format, **self.input_terms(endpoint))
        with await spool as spooled:
            return self.batch_info(await self.create(spooled, batch_id, before_create))

    async def create(self, spooled: BatchInput, batch_id: str, before_create: BeforeCreate) -> dict[str, Any]:
        """Send the spooled input and create the batch; awaits ``before_create`` right before the create."""
        raise NotImplementedError

    async def fetch(self, provider_batch_id: str) -> dict[str, Any]:
        """The provider's batch object, as it answers it."""
        return await self.account.call_json(
            "GET", f"{self.batches_path}/{provider_batch_id}", idempotent=True
        )

    async def get_batch(self, provider_batch_id: str) -> BatchInfo:
        return self.batch_info(await self.fetch(provider_batch_id))

    async def ended(self, provider_batch_id: str) -> dict[str, Any]:
        """The batch object, once the batch has ended (BatchNotEnded before: no results to read yet)."""
        obj = await self.fetch(provider_batch_id)
        info = self.batch_info(obj)
        if not info.ended:
            raise BatchNotEnded(provider_batch_id, info.raw_status)
        return obj

    async def list_batches(self, limit: int = 100) -> list[BatchInfo]:
        objects = await self.account.list_objects(
            self.batches_path, limit=limit, page_size=self.list_page, cursor=self.list_cursor
        )
        return [self.batch_info(obj) for obj in objects]

    async def cancel_batch(self, provider_batch_id: str) -> BatchInfo:
        # Cancelling twice is harmless, so the call is treated as idempotent.
        path = f"{self.batches_path}/{provider_batch_id}/cancel"
        return self.batch_info(await self.account.call_json("POST", path, idempotent=True))

    async def delete(self, path: str) -> dict[str, Any] | None:
        """DELETE a stored object; None when it was already gone (what we wanted)."""
        try:
            return await self.account.call_json("DELETE", path, idempotent=True)
        except ProviderNotFound:
            return None

    def results(self, provider_batch_id: str) -> AsyncIterator[ResultLine]:
        return each_line(self.result_blocks(provider_batch_id))

    def result_blocks(self, provider_batch_id: str) -> AsyncIterator[list[ResultLine]]:
        raise NotImplementedError

    async def send_sync(
        self,
        endpoint: str,
        body: bytes,
        *,
        service_tier: str | None = None,
        max_retries: int | None = None,
        read_timeout: float | None = None,
    ) -> SyncResult:
        response = await self.post_sync(
            self.sync_path(endpoint), with_service_tier(body, service_tier), max_retries, read_timeout
        )
        doc = parse_object(response.content, f"POST {endpoint}")
        return SyncResult(response.content, doc.get("usage"), response.status_code, dict(response.headers))

    async def post_sync(
        self, path: str, content: bytes, max_retries: int | None, read_timeout: float | None
    ) -> httpx.Response:
        """POST one sync request body to ``path``: a repeated sync call costs twice but changes
        nothing, so it is retried like a read."""
        return await self.account.call(
            "POST",
            path,
            idempotent=True,
            max_retries=max_retries,
            read_timeout=read_timeout,
            content=content,
            headers={"content-type": "application/json"},
        )
