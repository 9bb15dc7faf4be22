"""Intake throughput: bulk and single HTTP enqueues, the Python client, against raw redis-py.

Starts its own redis-server and the real API (``batchshift api``, a uvicorn process) on free
ports. The baseline writes the same job hashes and index entries with pipelined redis-py
commands and no checks at all: the floor cost of putting those bytes into Redis. Each figure is
reported as a ratio to it (target for bulk intake: at least 0.25). Peak memory is ru_maxrss of
this process for the baseline and of the API server process for the HTTP figures.
"""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import orjson
from redis.asyncio import Redis

from batchshift.client import BatchshiftClient, job_request
from batchshift.embedded_redis import embedded_redis, free_port
from benchmarks.support import write_raw
from scheduler.ledger import ids
from scheduler.ledger.jobs import NewJob

API_KEY = "bench-tenant-key"
BULK_JOBS = 20_000
BULK_CHUNK = 2_000
SINGLE_JOBS = 10_000
CLIENT_SINGLE_JOBS = 2_000
CONCURRENCY = 32
CLIENT_BULK_JOBS = 10_000
BODY = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You summarise support tickets in one sentence."},
        {"role": "user", "content": "Customer reports the export button does nothing on Safari 17. " * 3},
    ],
    "max_tokens": 200,
}


def _request(n: int) -> dict[str, Any]:
    return job_request("openai", {**BODY, "metadata": {"n": n}}, deadline_in=3600, tags={"feature": "bench"})


def _mb(kilobytes: int) -> float:
    return kilobytes / 1024  # Linux reports ru_maxrss in KiB


@contextmanager
def api_server(redis_url: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``batchshift api`` in its own process, configured by environment only."""
    port = free_port()
    env = {
        **os.environ,
        "BATCHSHIFT_CONFIG": "",
        "BATCHSHIFT_REDIS_URL": redis_url,
        "BATCHSHIFT_TENANTS": orjson.dumps({"bench": {"api_key": API_KEY}}).decode(),
        "BATCHSHIFT_PROVIDERS": orjson.dumps(
            {"openai": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "sk-bench"}}
        ).decode(),
        "BATCHSHIFT_LOG_FORMAT": "json",
    }
    cmd = [sys.executable, "-m", "batchshift.cli", "api", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"batchshift api exited with {proc.returncode}")
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("batchshift api did not become ready")
            time.sleep(0.1)
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def baseline(redis: Redis, count: int) -> float:
    """Raw redis-py: the same job hash, lane queue and tenant index writes, pipelined, no checks."""
    now = time.time_ns() // 1_000_000
    jobs = [
        NewJob(
            id=ids.job_id(now),
            tenant="bench",
            provider="openai",
            endpoint="/v1/chat/completions",
            model=BODY["model"],  # type: ignore[arg-type]
            body=orjson.dumps(_request(n)["body"], option=orjson.OPT_SORT_KEYS),
            deadline_ms=now + 3_600_000,
            created_ms=now,
            tags={"feature": "bench"},
        )
        for n in range(count)
    ]
    started = time.perf_counter()
    await write_raw(redis, jobs, BULK_CHUNK)
    return count / (time.perf_counter() - started)


async def bulk_http(url: str, count: int) -> float:
    payloads = [
        orjson.dumps({"jobs": [_request(n) for n in range(start, min(start + BULK_CHUNK, count))]})
        for start in range(0, count, BULK_CHUNK)
    ]
    headers = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as http:
        started = time.perf_counter()
        for payload in payloads:
            response = await http.post("/v1/jobs/bulk", content=payload)
            response.raise_for_status()
        return count / (time.perf_counter() - started)


async def _concurrently(count: int, call: Callable[[int], Awaitable[None]]) -> float:
    queue = iter(range(count))

    async def worker() -> None:
        for n in queue:
            await call(n)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return count / (time.perf_counter() - started)


async def single_http(url: str, count: int) -> float:
    """One job per request, ``CONCURRENCY`` keep-alive connections each with one request in flight.

    The requests are written ready-built and each answer read by its ``content-length``: any HTTP
    client library costs this process more CPU per request (httpx 2-3 ms, aiohttp about 0.5 ms) than
    the API spends answering it, and on a shared 2-core machine the figure would measure the client.
    """
    host, port = url.removeprefix("http://").split(":")
    bodies = [orjson.dumps(_request(n)) for n in range(count)]
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nhost: {host}:{port}\r\nauthorization: Bearer {API_KEY}\r\n"
        "content-type: application/json\r\ncontent-length: "
    ).encode()
    requests = [head + str(len(body)).encode() + b"\r\n\r\n" + body for body in bodies]
    queue = iter(range(count))

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for n in queue:
                writer.write(requests[n])
                status = await reader.readuntil(b"\r\n")
                headers = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in headers.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                if b" 202 " not in status:
                    raise RuntimeError(f"enqueue answered {status.decode().strip()}")
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(CONCURRENCY)))
    return count / (time.perf_counter() - started)


async def client_bulk(url: str, count: int) -> float:
    requests = [_request(n) for n in range(count)]
    async with BatchshiftClient(url, API_KEY, timeout=120) as client:
        started = time.perf_counter()
        results = await client.enqueue_many(requests, chunk_size=BULK_CHUNK)
        elapsed = time.perf_counter() - started
    assert all(not isinstance(r, Exception) for r in results)
    return count / elapsed


async def client_single(url: str, count: int) -> float:
    async with BatchshiftClient(url, API_KEY, timeout=60) as client:

        async def one(n: int) -> None:
            await client.enqueue(
                "openai", {**BODY, "metadata": {"n": n}}, deadline_in=3600, tags={"feature": "bench"}
            )

        return await _concurrently(count, one)


async def run() -> list[dict[str, Any]]:
    """Measure every intake figure and its ratio to the raw redis-py baseline."""
    with embedded_redis() as redis_url:
        redis = Redis.from_url(redis_url)
        try:
            # The server starts first: Linux carries a parent's peak RSS into a forked child's
            # ru_maxrss, so forking after the baseline would report the baseline's memory.
            with api_server(redis_url) as (url, _proc):
                await redis.flushdb()
                base = await baseline(redis, BULK_JOBS)
                base_mb = _mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
                figures: list[tuple[str, float]] = []
                for figure, measure, count in (
                    (f"bulk HTTP intake ({BULK_CHUNK} jobs/request)", bulk_http, BULK_JOBS),
                    (f"single HTTP enqueue, concurrency {CONCURRENCY}", single_http, SINGLE_JOBS),
                    (f"Python client enqueue_many ({BULK_CHUNK}/request)", client_bulk, CLIENT_BULK_JOBS),
                    (f"Python client enqueue, concurrency {CONCURRENCY}", client_single, CLIENT_SINGLE_JOBS),
                ):
                    await redis.flushdb()
                    figures.append((figure, await measure(url, count)))
            # The API process has been waited for, so RUSAGE_CHILDREN now covers it (redis-server,
            # the other child, is still running and not yet counted).
            server_mb = _mb(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
        finally:
            await redis.aclose()
    rows = [
        {
            "figure": "raw redis-py pipelined baseline",
            "throughput": base,
            "unit": "jobs/s",
            "baseline": base,
            "ratio": 1.0,
            "peak_mb": base_mb,
        }
    ]
    for figure, throughput in figures:
        rows.append(
            {
                "figure": figure,
                "throughput": throughput,
                "unit": "jobs/s",
                "baseline": base,
                "ratio": throughput / base,
                "peak_mb": server_mb,
            }
        )
    return rows
