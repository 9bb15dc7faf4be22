"""Helpers for the planning tests: jobs with chosen lanes, deadlines and sizes."""

from __future__ import annotations

import orjson

from scheduler.ledger import ids
from scheduler.ledger.jobs import NewJob

ENDPOINTS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}


def new_job(
    provider: str, model: str, deadline_ms: int, *, created_ms: int = 0, size: int = 0, tenant: str = "acme"
) -> NewJob:
    """A queued job; ``size`` pads the body to about that many bytes."""
    body: dict[str, object]
    if provider == "anthropic":
        body = {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    else:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    raw = orjson.dumps(body)
    if size > len(raw):
        body["metadata_pad"] = "x" * (size - len(raw) - 20)
        raw = orjson.dumps(body)
    return NewJob(
        id=ids.job_id(created_ms or None),
        tenant=tenant,
        provider=provider,
        endpoint=ENDPOINTS.get(provider, "/v1/chat/completions"),
        model=model,
        body=raw,
        deadline_ms=deadline_ms,
        created_ms=created_ms,
    )


async def enqueue_lane(
    ledger, provider: str, model: str, count: int, *, now_ms: int, age_ms: int, deadlines
) -> list[str]:
    """Enqueue ``count`` jobs that arrived ``age_ms`` before ``now_ms``; ``deadlines(i)`` gives each deadline."""
    ids_: list[str] = []
    for start in range(0, count, 1000):
        jobs = [
            new_job(provider, model, deadlines(i), created_ms=now_ms - age_ms)
            for i in range(start, min(start + 1000, count))
        ]
        await ledger.enqueue_many(jobs)
        ids_.extend(j.id for j in jobs)
    return ids_


async def arq_queue(redis) -> list[str]:
    """The ids of the arq jobs waiting in the default queue."""
    return sorted(m.decode() for m in await redis.zrange("arq:queue", 0, -1))
