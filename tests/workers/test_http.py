"""Retry decisions and httpx error mapping (httpx.MockTransport stands in for the network here only)."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from config.settings import HttpSettings
from workers import errors
from workers.http import build_client, retry_delay, send, timeout_for

HTTP = HttpSettings(max_retries=3, backoff_base=0.001, backoff_max=0.01)


def _client(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler), timeout=timeout_for(HTTP))


def _sequence(
    *steps: int | Exception,
) -> tuple[Callable[[httpx.Request], httpx.Response], list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        step = steps[min(len(seen), len(steps)) - 1]
        if isinstance(step, Exception):
            raise step
        return httpx.Response(step, json={"ok": step < 400})

    return handler, seen


def test_build_client_takes_every_timeout_from_settings() -> None:
    settings = HttpSettings(connect_timeout=1, read_timeout=2, write_timeout=3, pool_timeout=4)
    client = build_client(settings)
    assert client.timeout == httpx.Timeout(connect=1, read=2, write=3, pool=4)


@pytest.mark.parametrize("status", [429, 500, 503, 529])
async def test_retriable_statuses_are_retried_then_succeed(status: int) -> None:
    handler, seen = _sequence(status, status, 200)
    async with _client(handler) as client:
        response = await send(client, "GET", "https://p.example/v1/batches/b", http=HTTP, idempotent=True)
    assert response.status_code == 200
    assert len(seen) == 3


async def test_permanent_errors_are_not_retried() -> None:
    handler, seen = _sequence(400, 200)
    async with _client(handler) as client:
        with pytest.raises(errors.ProviderInvalidRequest):
            await send(client, "GET", "https://p.example/x", http=HTTP, idempotent=True)
    assert len(seen) == 1


async def test_retries_stop_at_max_retries() -> None:
    handler, seen = _sequence(500)
    async with _client(handler) as client:
        with pytest.raises(errors.ServerError):
            await send(client, "GET", "https://p.example/x", http=HTTP, idempotent=True)
    assert len(seen) == HTTP.max_retries + 1


async def test_connect_errors_map_to_connection_failed_and_are_retried() -> None:
    handler, seen = _sequence(httpx.ConnectError("refused"), 200)
    async with _client(handler) as client:
        response = await send(client, "POST", "https://p.example/x", http=HTTP, idempotent=False)
    assert response.status_code == 200
    assert len(seen) == 2


async def test_read_timeout_after_sending_is_not_retried_when_not_idempotent() -> None:
    handler, seen = _sequence(httpx.ReadTimeout("slow"), 200)
    async with _client(handler) as client:
        with pytest.raises(errors.ResponseTimeout) as caught:
            await send(client, "POST", "https://p.example/x", http=HTTP, idempotent=False)
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)
    assert len(seen) == 1


async def test_server_error_on_a_non_idempotent_call_is_not_retried() -> None:
    handler, seen = _sequence(500, 200)
    async with _client(handler) as client:
        with pytest.raises(errors.ServerError):
            await send(client, "POST", "https://p.example/x", http=HTTP, idempotent=False)
    assert len(seen) == 1


async def test_rate_limit_on_a_non_idempotent_call_is_retried() -> None:
    handler, seen = _sequence(429, 200)
    async with _client(handler) as client:
        response = await send(client, "POST", "https://p.example/x", http=HTTP, idempotent=False)
    assert response.status_code == 200
    assert len(seen) == 2


def _rate_limited(retry_after: float | None) -> errors.RateLimited:
    return errors.RateLimited(429, "rate_limit_error", "slow down", True, retry_after)


def test_retry_delay_honours_retry_after() -> None:
    settings = HttpSettings(max_retries=5, backoff_base=0.5, backoff_max=30)
    assert retry_delay(_rate_limited(12.0), 0, settings, idempotent=True) == 12.0


def test_retry_delay_leaves_long_retry_after_to_the_caller() -> None:
    settings = HttpSettings(max_retries=5, backoff_base=0.5, backoff_max=30)
    assert retry_delay(_rate_limited(120.0), 0, settings, idempotent=True) is None


def test_retry_delay_backs_off_exponentially_with_jitter_under_the_cap() -> None:
    settings = HttpSettings(max_retries=10, backoff_base=1, backoff_max=8)
    exc = errors.ServerError(500, "server_error", "x", True)
    for attempt, ceiling in [(0, 1), (1, 2), (2, 4), (3, 8), (6, 8)]:
        delays = [retry_delay(exc, attempt, settings, idempotent=True) for _ in range(50)]
        assert all(d is not None and ceiling / 2 <= d <= ceiling for d in delays)
    assert len({retry_delay(exc, 3, settings, idempotent=True) for _ in range(20)}) > 1


def test_retry_delay_never_retries_permanent_errors() -> None:
    settings = HttpSettings(max_retries=5)
    invalid = errors.ProviderInvalidRequest(400, "invalid_request_error", "bad", False)
    assert retry_delay(invalid, 0, settings, idempotent=True) is None
    unknown = errors.BatchCreateUnknown("b", "timeout")
    assert retry_delay(unknown, 0, settings, idempotent=False) is None


WORKERS = Path(__file__).resolve().parents[2] / "workers"


def _httpx_uses(tree: ast.AST) -> tuple[list[int], list[int]]:
    """Lines that catch an httpx exception, and lines that build an httpx client."""
    catches, builds = [], []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.ExceptHandler)
            and node.type is not None
            and "httpx." in ast.unparse(node.type)
        ):
            catches.append(node.lineno)
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "httpx.AsyncClient":
            builds.append(node.lineno)
    return catches, builds


def test_only_workers_http_builds_clients_and_catches_httpx_errors() -> None:
    """Every outbound call goes through workers/http.py: nothing else in workers/ builds an httpx
    client or catches httpx's exceptions (they are translated once, there)."""
    offenders = {}
    for path in sorted(WORKERS.rglob("*.py")):
        if path.name == "http.py" and path.parent == WORKERS:
            continue
        catches, builds = _httpx_uses(ast.parse(path.read_text()))
        if catches or builds:
            offenders[str(path.relative_to(WORKERS))] = catches + builds
    assert offenders == {}
    catches, builds = _httpx_uses(ast.parse((WORKERS / "http.py").read_text()))
    assert catches  # the check looks at the right shapes
    assert builds
