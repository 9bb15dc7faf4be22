"""Webhook delivery benchmark: signed deliveries per second to a local receiver, against raw aiohttp.

Ours: 5,000 jobs finish with a callback URL; :class:`workers.webhooks.Deliverer` claims, signs,
sends (SSRF-guarded client, each send under its deadline and answer cap) and settles them. All go
to one tenant's one URL, so the default per-URL limit (16 at once) holds them, not the overall 64.
Baseline, same run and same receiver: raw ``aiohttp.ClientSession.post`` (the cheapest general
client per request we measured; our sends use a leaner HTTP/1.1 client, ``workers/webhook_http.py``)
of a body of the same size, 64 at once, nothing else.
The receiver is a minimal ASGI app under uvicorn in its own process, so its CPU is not ours.
Target: ratio at least 0.5. Peak is the resident-set growth during our step (``VmHWM``).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp

from batchshift.embedded_redis import free_port
from benchmarks.support import ROOT, reset_peak, status_kb, wait_until_up

DELIVERIES = 5_000
CONCURRENCY = 64
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


async def receiver(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The benchmark's receiver: read the body, answer 204."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


@contextmanager
def _receiver() -> Iterator[str]:
    """The receiver app under uvicorn in its own process."""
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "benchmarks.webhooks:receiver", "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--log-level", "warning", "--lifespan", "off"], cwd=ROOT)
    url = f"http://127.0.0.1:{port}/hook"
    try:
        wait_until_up(url, proc, "receiver")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def _ours(redis_url: str, url: str) -> dict[str, Any]:
    from redis.asyncio import Redis

    from config.settings import Settings, TenantSettings, WebhookSettings
    from scheduler.ledger.ids import job_id
    from scheduler.ledger.jobs import NewJob
    from scheduler.ledger.ledger import Finish, Ledger
    from workers.webhooks import Deliverer, build_client

    settings = Settings(
        redis_url=redis_url,
        tenants={"bench": TenantSettings(api_key="k", webhook_secrets=[SECRET])},
        webhooks=WebhookSettings(concurrency=CONCURRENCY, claim_batch=1000),
        webhook_allowlist=["127.0.0.0/8"],
    )
    redis = Redis.from_url(redis_url)
    await redis.flushdb()
    ledger = Ledger(redis)
    now = int(time.time() * 1000) - 1000
    result = (
        b'{"id":"chatcmpl-1","object":"chat.completion","choices":[{"message":{"content":"'
        + b"x" * 300
        + b'"}}]}'
    )
    ids = [job_id() for _ in range(DELIVERIES)]
    jobs = [
        NewJob(
            i,
            "bench",
            "openai",
            "/v1/chat/completions",
            "gpt-4o-mini",
            b"{}",
            now + 60_000,
            now,
            callback_url=url,
            state="sync",
        )
        for i in ids
    ]
    for start in range(0, DELIVERIES, 1000):
        await ledger.enqueue_many(jobs[start : start + 1000])
        items = [
            Finish(i, "succeeded", "sync", from_states=("sync",), result=result)
            for i in ids[start : start + 1000]
        ]
        await ledger.finish(items, now)
    async with build_client(settings) as client:
        start_kb = reset_peak()
        started, cpu = time.perf_counter(), time.process_time()
        report = await Deliverer(settings, redis, client).run()
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    await redis.aclose()
    if report.delivered != DELIVERIES:
        raise RuntimeError(f"delivered {report.delivered} of {DELIVERIES}")
    return {"seconds": seconds, "cpu_s": cpu, "peak_mb": max(0, status_kb("VmHWM") - start_kb) / 1024}


async def _raw(url: str, size: int) -> dict[str, Any]:
    body = b"x" * size
    semaphore = asyncio.Semaphore(CONCURRENCY)
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as client:

        async def one() -> None:
            async with (
                semaphore,
                client.post(url, data=body, headers={"content-type": "application/json"}) as response,
            ):
                await response.read()
                response.raise_for_status()

        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(one() for _ in range(DELIVERIES)))
        return {"seconds": time.perf_counter() - started, "cpu_s": time.process_time() - cpu}


async def run() -> list[dict[str, Any]]:
    """Deliveries per second, ours against raw aiohttp at the same concurrency."""
    from batchshift.embedded_redis import embedded_redis

    with embedded_redis() as redis_url, _receiver() as url:
        base = await _raw(url, 900)
        ours = await _ours(redis_url, url)
    throughput, baseline = DELIVERIES / ours["seconds"], DELIVERIES / base["seconds"]
    return [
        {
            "figure": f"webhook deliveries to one URL, baseline {CONCURRENCY} at once (peak = growth)",
            "name": "webhook deliveries",
            "throughput": throughput,
            "unit": "deliveries/s",
            "baseline": baseline,
            "ratio": throughput / baseline,
            # This process's CPU per delivery (the wall-clock ratio moves with the machine's load):
            # ours claims, signs, sends and settles; the baseline only sends.
            "cpu_us_per_delivery": ours["cpu_s"] / DELIVERIES * 1e6,
            "baseline_cpu_us_per_delivery": base["cpu_s"] / DELIVERIES * 1e6,
            "peak_mb": ours["peak_mb"],
            "peak_mem_mb": ours["peak_mb"],
        }
    ]


if __name__ == "__main__":
    for row in asyncio.run(run()):
        print(row)
