"""Runs our real API for tests: in process over ASGI (many small validation tests), or as a real
uvicorn server on a free port in a thread (real HTTP: concurrency, long polls, the Python client)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import uvicorn
from fastapi import FastAPI
from redis.asyncio import Redis

from api.app import create_app
from batchshift.embedded_redis import free_port
from config.settings import Settings

ACME = {"authorization": "Bearer acme-key"}
GLOBEX = {"authorization": "Bearer globex-key"}
ADMIN = {"authorization": "Bearer admin-key"}


@contextlib.asynccontextmanager
async def asgi(app: FastAPI, headers: dict[str, str] | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client wired to ``app`` in this process, its lifespan run; no default headers."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=headers) as client:
            yield client


@contextlib.asynccontextmanager
async def asgi_client(
    settings: Settings, redis: Redis | None = None, headers: dict[str, str] | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client wired to a fresh API in this process, sending ``headers`` (default: acme's key).

    Without ``redis`` the API builds its own Redis client from settings, as ``batchshift api`` does.
    """
    async with asgi(create_app(settings, redis=redis), ACME if headers is None else headers) as client:
        yield client


@contextlib.contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free port in a thread; yield its base URL."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"api-{port}", daemon=True)
    thread.start()
    while not server.started:  # a server that never starts fails the test by its timeout
        if not thread.is_alive():
            raise RuntimeError("the API server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


async def bs_key_count(redis: Redis) -> int:
    """How many batchshift keys Redis holds: equal before and after means nothing was stored."""
    return len(await redis.keys("bs:*"))


async def bs_snapshot(redis: Redis) -> dict[bytes, object]:
    """Every batchshift key with its type and size, to show a refusal changed nothing."""
    snapshot: dict[bytes, object] = {}
    for key in await redis.keys("bs:*"):
        kind = (await redis.type(key)).decode()
        size = {
            "hash": redis.hlen,
            "zset": redis.zcard,
            "set": redis.scard,
            "list": redis.llen,
            "string": redis.strlen,
        }[kind]
        snapshot[key] = (kind, await size(key))  # type: ignore[operator]
    return snapshot
