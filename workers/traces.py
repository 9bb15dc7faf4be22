"""What the workers' spans say: GenAI attributes of a provider call, and the traces a batch serves.

The spans themselves come from config/tracing.py; this module owns their content. A sync call's
span carries the GenAI semantic conventions (``gen_ai.*``: operation, provider, model, the token
counts of the provider's own usage) and the provider's request id. A batch serves many traces, so
its spans link to the trace of each job it holds, read from the jobs' stored ``traceparent``; the
SDK keeps the first 128 links of a span (``OTEL_SPAN_LINK_COUNT_LIMIT``), so this reads no more.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any, Concatenate, Final, ParamSpec, TypeVar

from redis.asyncio import Redis

from config.tracing import NO_SPAN, Span, Tracing
from scheduler.ledger import keys
from scheduler.ledger.jobs import JobRecord
from scheduler.planning.batches import Batches
from workers.context import WorkerContext, tracing_of

P = ParamSpec("P")
R = TypeVar("R")
BatchTask = Callable[Concatenate[WorkerContext, str, P], Awaitable[R]]  # a task of one batch id

# The GenAI operation of each endpoint we serve (gen_ai.operation.name).
OPERATIONS: Final[Mapping[str, str]] = {
    "/v1/chat/completions": "chat",
    "/v1/messages": "chat",
    "/v1/responses": "chat",
    "/v1/embeddings": "embeddings",
}
# The response header a provider names its request id in.
REQUEST_ID_HEADERS: Final = ("x-request-id", "request-id")
MAX_LINKS = 128  # the SDK's default span link limit: links past it would be dropped anyway
# Input and output token counts under each provider's own names (OpenAI chat; Anthropic, Responses).
_INPUT = ("input_tokens", "prompt_tokens")
_OUTPUT = ("output_tokens", "completion_tokens")


def operation(endpoint: str) -> str:
    """The GenAI operation name of a provider endpoint."""
    return OPERATIONS.get(endpoint, "chat")


def request_attributes(provider_kind: str, endpoint: str, model: str) -> dict[str, Any]:
    """What a provider call's span says before it is sent."""
    return {
        "gen_ai.operation.name": operation(endpoint),
        "gen_ai.provider.name": provider_kind,
        "gen_ai.request.model": model,
    }


def sync_call_span(
    tracing: Tracing, provider_kind: str, job: JobRecord, route: str, service_tier: str | None
) -> AbstractContextManager[Span]:
    """The span of one sync call, in the job's trace (``chat <model>``, a client span); tracing
    off, the shared no-op, with nothing built."""
    if not tracing.enabled:
        return NO_SPAN
    return tracing.span(
        f"{operation(job.endpoint)} {job.model}",
        parent=job.traceparent,
        tracestate=job.tracestate,
        kind="client",
        attributes=request_attributes(provider_kind, job.endpoint, job.model)
        | {
            "batchshift.job_id": job.id,
            "batchshift.route": route,
            "openai.request.service_tier": service_tier,
        },
    )


def usage_attributes(usage: Mapping[str, Any] | None, headers: Mapping[str, str]) -> dict[str, Any]:
    """What a provider call's span says once answered: token counts from the provider's usage, and
    its request id."""
    attributes: dict[str, Any] = {}
    if usage:
        for name, candidates in (
            ("gen_ai.usage.input_tokens", _INPUT),
            ("gen_ai.usage.output_tokens", _OUTPUT),
        ):
            value = next((usage[c] for c in candidates if isinstance(usage.get(c), int)), None)
            if value is not None:
                attributes[name] = value
    request_id = next((headers[h] for h in REQUEST_ID_HEADERS if h in headers), None)
    if request_id is not None:
        attributes["batchshift.provider_request_id"] = request_id
    return attributes


async def batch_links(redis: Redis, batch_id: str, limit: int = MAX_LINKS) -> list[str]:
    """The stored ``traceparent`` of (up to ``limit``) jobs of the batch: the traces its spans link to."""
    found: list[str] = []
    async for chunk in Batches(redis).job_ids(batch_id, limit):
        async with redis.pipeline(transaction=False) as pipe:
            for job_id in chunk[: limit - len(found)]:
                pipe.hget(keys.job(job_id), "traceparent")
            values = await pipe.execute()
        found.extend(v.decode() for v in values if v)
        if len(found) >= limit:
            break
    return found


def batch_span(name: str) -> Callable[[BatchTask[P, R]], BatchTask[P, R]]:
    """Run a batch task inside span ``name``, linked to the trace of each job the batch holds.

    Tracing off, the task runs as it is after one check; on, the links cost one read per job
    (at most :data:`MAX_LINKS`).
    """

    def wrap(task: BatchTask[P, R]) -> BatchTask[P, R]:
        @functools.wraps(task)
        async def run(ctx: WorkerContext, batch_id: str, /, *args: P.args, **kwargs: P.kwargs) -> R:
            tracing = tracing_of(ctx)
            if not tracing.enabled:
                return await task(ctx, batch_id, *args, **kwargs)
            links = await batch_links(ctx["redis"], batch_id)
            with tracing.span(
                name,
                links=links,
                attributes={"batchshift.batch_id": batch_id, "batchshift.jobs_linked": len(links)},
            ) as span:
                outcome = await task(ctx, batch_id, *args, **kwargs)
                span.set(**{"batchshift.outcome": str(outcome)})
                return outcome

        return run

    return wrap
