"""The provider adapter interface: what a batch line, a batch, a result line and a sync answer look like.

Adapters for each provider kind (:mod:`workers.providers.openai`, :mod:`workers.providers.anthropic`)
speak the provider's wire format and translate it into these provider-neutral dataclasses. Request
and response bodies stay provider-native JSON bytes: batchshift never rewrites what a producer sent,
and a batch result body is exactly what the synchronous call would have returned.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol, runtime_checkable

Status = Literal[
    "validating",
    "in_progress",
    "finalizing",
    "cancelling",
    "completed",
    "failed",
    "expired",
    "cancelled",
]
Outcome = Literal["succeeded", "failed", "retriable"]

ENDED_STATUSES: frozenset[Status] = frozenset({"completed", "failed", "expired", "cancelled"})


class BatchLine(NamedTuple):
    """One request for the batch builder (a NamedTuple: a batch makes 50,000, and a tuple is cheaper)."""

    custom_id: str  # our job id; doubles as the provider's custom_id
    body: bytes  # provider-native request body, JSON bytes (includes "model")


@dataclass(frozen=True, slots=True)
class BatchInfo:
    """A provider batch's status, normalised across providers."""

    provider_batch_id: str
    status: Status
    raw_status: str  # the provider's own word for it (Anthropic: "ended", "canceling", ...)
    total: int  # request counts as far as the provider tells them (Anthropic: only once ended)
    completed: int
    failed: int
    created_at: float | None  # epoch seconds
    ended_at: float | None
    metadata: dict[str, str] = field(default_factory=dict)  # OpenAI metadata; {} on Anthropic
    errors: list[dict[str, Any]] = field(default_factory=list)  # batch-level errors (OpenAI errors.data)
    # What the provider stores for the batch, by role: input_file_id, output_file_id, error_file_id
    # (OpenAI files); results_batch_id (Anthropic: the ended batch itself, which holds its results).
    files: dict[str, str] = field(default_factory=dict)
    model: str | None = None  # the model the provider says it runs the batch on (OpenAI); None: not told

    @property
    def ended(self) -> bool:
        """True once the batch can change no more and its results (if any) can be read."""
        return self.status in ENDED_STATUSES


class RequestId(NamedTuple):
    """One request of a provider batch as matching sees it: its custom_id and, when known, its model."""

    custom_id: str
    model: str | None


class ResultLine(NamedTuple):
    """One job's outcome in a batch.

    A NamedTuple rather than a frozen dataclass: a 50,000-line result file makes 50,000 of them,
    and a frozen dataclass's ``__init__`` costs several times a tuple's.
    """

    custom_id: str
    outcome: Outcome
    body: bytes | None  # provider-native response body when succeeded: what a sync call would return
    usage: dict[str, Any] | None  # the provider's usage object, as is
    error: dict[str, Any] | None  # {"type", "message", "code"} when failed or retriable
    billed: bool  # whether the provider charges for this line


@dataclass(frozen=True, slots=True)
class SyncResult:
    """The answer of a synchronous call."""

    body: bytes
    usage: dict[str, Any] | None
    status_code: int
    headers: dict[str, str]  # response headers, lower-cased names, rate-limit ones included


class ProviderAdapter(Protocol):
    """What the workers need from one provider account; one implementation per provider kind."""

    name: str  # the configured provider name (settings key)
    kind: str  # "openai" or "anthropic"
    request_limit: int  # most requests one batch may hold
    byte_limit: int  # largest batch input the provider accepts, in bytes

    def line_size(self, line: BatchLine, *, endpoint: str) -> int:
        """Bytes this line takes in the provider's batch input, for planners that count bytes."""
        ...

    def split(self, lines: Iterable[BatchLine], *, endpoint: str) -> Iterator[list[BatchLine]]:
        """Group lines, in order, into batches that stay under the request and byte limits."""
        ...

    async def submit_batch(
        self,
        lines: AsyncIterable[BatchLine] | Iterable[BatchLine],
        *,
        endpoint: str,
        batch_id: str,
        before_create: Callable[[], Awaitable[None]] | None = None,
    ) -> BatchInfo:
        """Spool the lines to a temporary file, upload it and create the batch tagged with ``batch_id``.

        ``before_create`` is awaited right before the create call (the submission lease stamps the
        create's start there, and raises to stop a submission that lost its lease).

        Raises:
            BatchTooLarge: the lines exceed the provider's limits (nothing was sent).
            InvalidBatchInput: a custom_id is malformed or repeated (nothing was sent).
            BatchCreateUnknown: the create call may or may not have created a batch; reconcile
                through :meth:`list_batches` and the ``batchshift_batch_id`` metadata, do not resend.
        """
        ...

    def request_ids(self, info: BatchInfo) -> AsyncIterator[list[RequestId]]:
        """The custom ids (and models, where told) of the batch's requests, in blocks, for matching
        a provider batch to ours: OpenAI's input file; Anthropic's results, once ended.

        Raises:
            BatchNotEnded: the provider does not show them yet (Anthropic before the batch ends).
            ProviderNotFound: they are gone (an input file deleted).
        """
        ...

    async def get_batch(self, provider_batch_id: str) -> BatchInfo:
        """The batch's current status."""
        ...

    async def list_batches(self, limit: int = 100) -> list[BatchInfo]:
        """The most recent batches, newest first, for reconciliation."""
        ...

    async def cancel_batch(self, provider_batch_id: str) -> BatchInfo:
        """Ask the provider to cancel; the batch ends later with partial results."""
        ...

    def results(self, provider_batch_id: str) -> AsyncIterator[ResultLine]:
        """Every result line of an ended batch, streamed, in the provider's (arbitrary) order."""
        ...

    def result_blocks(self, provider_batch_id: str) -> AsyncIterator[list[ResultLine]]:
        """The same lines, a received chunk's worth at a time (ingestion: one hand-off per chunk)."""
        ...

    async def send_sync(
        self,
        endpoint: str,
        body: bytes,
        *,
        service_tier: str | None = None,
        max_retries: int | None = None,
        read_timeout: float | None = None,
    ) -> SyncResult:
        """Send one request to the synchronous endpoint and return the provider's answer.

        ``service_tier`` is passed through to OpenAI (e.g. ``"flex"``); ``max_retries`` overrides
        the provider's retry count for this call (0 to fail fast, e.g. on flex capacity 429s);
        ``read_timeout`` the provider's read timeout (a long generation answers late).
        """
        ...


@runtime_checkable
class StoredDeleting(Protocol):
    """An adapter whose provider keeps a batch's data until deleted: OpenAI's files (input, output,
    error), Anthropic's ended message batches (requests and results)."""

    name: str

    async def delete_stored(self, object_id: str) -> None:
        """Delete one stored object (a file, or an ended batch) at the provider; one already gone
        counts as deleted.

        Raises:
            ProviderError: the provider did not confirm the deletion (retry later).
        """
        ...


BATCH_ID_METADATA_KEY = "batchshift_batch_id"  # OpenAI batch metadata key carrying our batch id


def batch_metadata(batch_id: str) -> dict[str, str]:
    """The metadata tagging a provider batch with our batch id (OpenAI keeps it; reconciliation reads it)."""
    return {BATCH_ID_METADATA_KEY: batch_id}


async def each_line(blocks: AsyncIterator[list[ResultLine]]) -> AsyncIterator[ResultLine]:
    """Result blocks flattened to single lines."""
    async for block in blocks:
        for line in block:
            yield line
