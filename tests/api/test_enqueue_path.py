"""POST /v1/jobs is answered ahead of routing (api/enqueue_path.py): the same answers as the declared
route gives, request by request, for jobs stored, repeated and refused at every step."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from redis.asyncio import Redis

from api.app import create_app
from api.enqueue_path import EnqueueFastPath
from config.settings import LimitSettings, Settings
from tests.api.harness import ACME, ADMIN, asgi
from tests.conftest import make_settings

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
JSON = {"content-type": "application/json"}

# (headers, body bytes) of each request, sent in this order to each app on an empty Redis.
REQUESTS: list[tuple[dict[str, str], bytes]] = [
    ({**ACME, **JSON}, b'{"provider": "openai", "body": {"model": "m", "messages": []}}'),
    ({**ACME, **JSON, "idempotency-key": "k-1"}, b'{"provider": "openai", "body": {"model": "m"}}'),
    ({**ACME, **JSON, "idempotency-key": "k-1"}, b'{"provider": "openai", "body": {"model": "m"}}'),
    ({**ACME, **JSON, "idempotency-key": "k-1"}, b'{"provider": "openai", "body": {"model": "n"}}'),
    ({**ACME, **JSON}, b'{"provider": "openai", "body": {"model": "m"}, "idempotency_key": "k-1"}'),
    ({**ACME, **JSON, "idempotency-key": "k 2"}, b'{"provider": "openai", "body": {"model": "m"}}'),
    (
        {**ACME, "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        b'{"provider": "openai", "body": {"model": "m"}}',
    ),
    ({**JSON}, b'{"provider": "openai", "body": {"model": "m"}}'),
    ({"authorization": "Bearer nope", **JSON}, b'{"provider": "openai", "body": {"model": "m"}}'),
    ({"authorization": "Basic acme-key"}, b"{}"),
    ({**ADMIN, **JSON}, b'{"provider": "openai", "body": {"model": "m"}}'),
    ({**ACME, **JSON}, b""),
    ({**ACME, **JSON}, b"{not json"),
    ({**ACME, **JSON}, b"[1, 2]"),
    ({**ACME, **JSON}, b'{"provider": "openai", "body": {"model": "m"}, "colour": "red"}'),
    ({**ACME, **JSON}, b'{"provider": "nobody", "body": {"model": "m"}}'),
    ({**ACME, **JSON}, b'{"provider": "openai", "body": {"model": "m"}, "deadline_in": -1}'),
    ({**ACME, **JSON}, b'{"provider": "openai", "body": {"model": "m", "pad": "' + b"x" * 3000 + b'"}}'),
    ({**ACME, **JSON, "content-length": "abc"}, b"{}"),
]

_JOB_ID = re.compile(r"job_[0-9A-Za-z]+")
_VARYING = {"id", "created_at", "deadline"}  # made from the clock and randomness at each enqueue


def _normal(value: Any) -> Any:
    """The answer with what differs between two runs (ids, clock readings) masked."""
    if isinstance(value, dict):
        return {k: "*" if k in _VARYING else _normal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    if isinstance(value, str):
        return _JOB_ID.sub("job_*", value)
    return value


async def _answers(settings: Settings, redis: Redis, fast: bool) -> list[tuple[int, dict[str, str], Any]]:
    await redis.flushdb()
    app = create_app(settings, redis=redis)
    if not fast:  # before the first request, which builds the middleware stack
        app.user_middleware = [m for m in app.user_middleware if m.cls is not EnqueueFastPath]
    answers = []
    async with asgi(app) as client:
        for headers, body in REQUESTS:
            response = await client.post("/v1/jobs", headers=headers, content=body)
            # The length follows the masked clock readings: an RFC 3339 time on a whole second has no
            # fraction (``iso``, as GET and webhooks show it), so it is checked against the body instead.
            kept = {k: v for k, v in response.headers.items() if k not in ("x-request-id", "content-length")}
            assert response.headers["x-request-id"].startswith("req_")
            assert int(response.headers["content-length"]) == len(response.content)
            answers.append((response.status_code, kept, _normal(response.json())))
    return answers


async def test_the_fast_path_answers_as_the_declared_route(
    redis_url: str, redis: Redis, monkeypatch: pytest.MonkeyPatch
):
    settings = make_settings(redis_url, limits=LimitSettings(max_body_bytes=2048))
    # One run on a whole second, one not: the times' text differs in length (no fraction on a whole
    # second), which the comparison must not mistake for a difference of the answers.
    second = (time.time_ns() // 1_000_000_000 + 1) * 1000
    monkeypatch.setattr("api.jobs.now_ms", lambda: second)
    fast = await _answers(settings, redis, fast=True)
    monkeypatch.setattr("api.jobs.now_ms", lambda: second + 123)
    routed = await _answers(settings, redis, fast=False)
    assert [status for status, _, _ in fast] == [
        202, 202, 202, 409, 202, 422, 202, 401, 401, 401, 403, 400, 400, 422, 422, 422, 422, 413, 422,
    ]  # fmt: skip
    assert fast == routed


async def test_other_methods_and_paths_pass_through(redis_url: str, redis: Redis):
    async with asgi(create_app(make_settings(redis_url), redis=redis), ACME) as client:
        assert (await client.get("/v1/jobs")).status_code == 200  # the listing
        assert (await client.put("/v1/jobs", json={})).status_code == 405
        assert (await client.post("/v1/jobs/", json={})).status_code in (307, 404)
        bulk = await client.post("/v1/jobs/bulk", json={"jobs": [{"provider": "openai", "body": CHAT}]})
        assert bulk.status_code == 200
