"""What several benchmark stages share: peak-memory readings and servers in their own processes.

Memory is read from ``/proc/self/status``: ``VmHWM`` (the resident-set high-water mark) after
resetting it through ``/proc/self/clear_refs``. ``ru_maxrss`` is avoided because Linux carries it
across ``exec`` from the parent, and tracemalloc because it slows the code it measures.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
from redis.asyncio import Redis

from batchshift.embedded_redis import free_port
from scheduler.ledger import keys
from scheduler.ledger.jobs import NewJob

ROOT = Path(__file__).resolve().parents[1]


def status_kb(field: str) -> int:
    """A ``/proc/self/status`` figure in KiB (0 where there is no such file)."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak() -> int:
    """Reset the resident-set high-water mark to now; returns the resident set in KiB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return status_kb("VmRSS")


def peak_growth_mb(start_kb: int) -> float:
    """How far the high-water mark rose above ``start_kb``, in MB."""
    return max(0, status_kb("VmHWM") - start_kb) / 1024


def wait_until_up(url: str, proc: subprocess.Popen[bytes], what: str, timeout_s: float = 30) -> None:
    """Poll ``url`` until it answers 2xx; raise if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url).status_code < 300:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"the {what} did not start")
        time.sleep(0.1)


@contextmanager
def emulator_process(turnaround_s: float = 1.0) -> Iterator[str]:
    """The provider emulator in its own process (its CPU and memory stay out of the figures)."""
    port = free_port()
    code = (
        "from emulator.server import serve; "
        f"serve('127.0.0.1', {port}, log_level='warning', turnaround_s={turnaround_s})"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url + "/_emulator/health", proc, "emulator")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def write_raw(redis: Redis, jobs: Sequence[NewJob], chunk: int) -> None:
    """The raw redis-py baseline's writes: each job's hash, lane queue and tenant index entries,
    pipelined in chunks, with none of intake's checks."""
    for start in range(0, len(jobs), chunk):
        async with redis.pipeline(transaction=False) as pipe:
            for job in jobs[start : start + chunk]:
                pipe.hset(keys.job(job.id), mapping=job.fields())
                pipe.zadd(keys.lane_queue(job.lane), {job.id: job.deadline_ms})
                pipe.zadd(keys.tenant_jobs(job.tenant), {job.id: 0})
            await pipe.execute()
