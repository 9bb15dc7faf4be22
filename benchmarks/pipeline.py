"""Pipeline: N jobs end to end, from the first bulk request to the last result stored and its webhook
delivered, in two topologies on one Redis.

``one process`` is ``batchshift run`` (API, scheduler and a worker in one process); ``processes``
is two ``batchshift api``, one ``batchshift scheduler`` and two ``batchshift worker`` processes.
Both start from an empty Redis (their own embedded server) and the provider emulator in its own
process with a batch turnaround of 0, so what is measured is batchshift: intake, flush, submission,
polls, ingestion, finishing and webhook delivery. This process posts the jobs in bulk requests
(round robin over the APIs) and receives the webhooks; a job counts once its ``job.succeeded``
delivery arrived.

The baseline, measured in the same run against the same Redis server, writes the same job hashes
and index entries with pipelined redis-py commands and reads every hash back: the floor cost of
the bytes the pipeline stores and returns. Each row prints jobs/s and its ratio to it, p50/p99
from enqueue to result (the job's ``completed_ms`` less its ``created_ms``, on the servers' own
clock), each process's peak resident set (``VmHWM`` read before it stops) and CPU time per job
(user + system from the first request to the last webhook: on a shared machine, where jobs/s
depends on what else runs, this is the figure a change moves), and Redis
``used_memory`` per job once every result is in (records are kept for the retention, so this is
what a job costs Redis while it is kept). The Redis server's CPU (``INFO cpu``) and this process's
(posting the jobs, receiving the webhooks) are printed beside the batchshift processes'.

Settings, for working on a stage: ``BATCHSHIFT_PIPELINE_JOBS`` sets a smaller count,
``BATCHSHIFT_PIPELINE_TOPOLOGIES`` a comma-separated subset (``one process,processes``),
``BATCHSHIFT_PIPELINE_PROFILE`` a directory where py-spy (``pip install py-spy``) records each
process's samples (``<topology>-<role>.txt``, collapsed stacks) and where each topology's Redis
time per command and Lua script is written (``<topology>-redis.txt``, from the slow log at a
threshold of 0, which itself costs Redis time: the figures of a profiled run are not comparable).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from redis.asyncio import Redis

from batchshift.client import job_request
from batchshift.embedded_redis import embedded_redis, free_port
from benchmarks.intake import BODY
from benchmarks.support import ROOT, emulator_process, wait_until_up, write_raw
from scheduler.ledger import ids, keys, scripts
from scheduler.ledger.jobs import NewJob

JOBS = int(os.environ.get("BATCHSHIFT_PIPELINE_JOBS", "50000"))
CHUNK = 1_000  # jobs per bulk request, as a backfill sends them
API_KEY = "pipeline-bench-key"
TENANT = "bench"
WEBHOOK_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
# The jobs' deadline: a backfill's day, the batch APIs' own completion window. With one hour, the SLO
# tracker rightly flipped jobs to sync from the first seconds: 50,000 jobs due together are more than
# the sync lane (16 calls at once) could absorb before the deadline if the batches failed.
DEADLINE_S = 24 * 3600
# A run that has not delivered every webhook by then is reported as failed, not waited on forever.
TIMEOUT_S = float(os.environ.get("BATCHSHIFT_PIPELINE_TIMEOUT_S", "900"))
# A process counts as started once it used at most this share of a core over one probe.
IDLE_PROBE_S = 0.5
IDLE_CPU_SHARE = 0.1
TOPOLOGIES = ("one process", "processes")
PROFILE_DIR = os.environ.get("BATCHSHIFT_PIPELINE_PROFILE", "")
PROFILE_RATE_HZ = 250


@dataclass
class Receiver:
    """The producer's webhook endpoint: counts distinct deliveries and when the last one came."""

    seen: set[str] = field(default_factory=set)
    last: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    expected: int = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        msg_id = dict(scope["headers"]).get(b"webhook-id", b"")
        if msg_id and msg_id not in self.seen:
            self.seen.add(msg_id)
            self.last = time.perf_counter()
            if len(self.seen) >= self.expected:
                self.done.set()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def _settings_env(redis_url: str, emulator_url: str) -> dict[str, str]:
    """Every process's settings, by environment only; defaults except where the benchmark needs
    otherwise (a loopback receiver, a tick and first poll fit for a provider answering at once)."""

    def js(value: Any) -> str:
        return orjson.dumps(value).decode()

    return {
        **os.environ,
        "BATCHSHIFT_CONFIG": "",
        "BATCHSHIFT_REDIS_URL": redis_url,
        "BATCHSHIFT_TENANTS": js({TENANT: {"api_key": API_KEY, "webhook_secrets": [WEBHOOK_SECRET]}}),
        "BATCHSHIFT_PROVIDERS": js(
            {"openai": {"kind": "openai", "base_url": emulator_url + "/v1", "api_key": "sk-bench"}}
        ),
        "BATCHSHIFT_LANE_DEFAULTS": js({"max_wait": 0}),
        "BATCHSHIFT_SCHEDULER": js({"tick_interval_s": 0.2, "poll_initial_s": 0.5, "poll_max_s": 2}),
        "BATCHSHIFT_WEBHOOK_ALLOWLIST": js(["127.0.0.1/32"]),
        "BATCHSHIFT_LOG_FORMAT": "json",
        "BATCHSHIFT_LOG_LEVEL": "WARNING",
    }


def _spawn(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "batchshift.cli", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@contextmanager
def topology(
    name: str, env: dict[str, str]
) -> Iterator[tuple[list[str], dict[str, subprocess.Popen[bytes]]]]:
    """The named topology's processes, running; yields the API URLs and the processes by role."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    urls: list[str] = []
    try:
        if name == "one process":
            port = free_port()
            procs["run"] = _spawn(env, "run", "--port", str(port))
            urls.append(f"http://127.0.0.1:{port}")
        else:
            for n in (1, 2):
                port = free_port()
                procs[f"api {n}"] = _spawn(env, "api", "--port", str(port))
                urls.append(f"http://127.0.0.1:{port}")
            procs["scheduler"] = _spawn(env, "scheduler")
            for n in (1, 2):
                procs[f"worker {n}"] = _spawn(env, "worker")
        for n, url in enumerate(urls):
            proc = procs["run"] if name == "one process" else procs[f"api {n + 1}"]
            wait_until_up(url + "/readyz", proc, f"API at {url}")
        wait_until_idle(procs)
        yield urls, procs
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def cpu_s(pid: int) -> float:
    """A live process's CPU time so far (user + system), in seconds (0 where it cannot be read)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until_idle(procs: dict[str, subprocess.Popen[bytes]], timeout_s: float = 30) -> None:
    """Wait until every process has ended its start (imports, connections: a worker is still
    importing its tasks when the API answers), so neither the clock nor the CPU figures count it."""
    deadline = time.monotonic() + timeout_s
    before = {role: cpu_s(proc.pid) for role, proc in procs.items()}
    while time.monotonic() < deadline:
        time.sleep(IDLE_PROBE_S)
        now = {role: cpu_s(proc.pid) for role, proc in procs.items()}
        if all(now[role] - before[role] <= IDLE_CPU_SHARE * IDLE_PROBE_S for role in procs):
            return
        before = now


def selected_topologies() -> tuple[str, ...]:
    """The topologies to run: all, or those ``BATCHSHIFT_PIPELINE_TOPOLOGIES`` names."""
    raw = os.environ.get("BATCHSHIFT_PIPELINE_TOPOLOGIES", "")
    chosen = tuple(name.strip() for name in raw.split(",") if name.strip()) or TOPOLOGIES
    unknown = [name for name in chosen if name not in TOPOLOGIES]
    if unknown:
        raise SystemExit(f"BATCHSHIFT_PIPELINE_TOPOLOGIES: unknown {unknown}; known: {list(TOPOLOGIES)}")
    return chosen


def _slug(text: str) -> str:
    return text.replace(" ", "_")


@contextmanager
def sampled(name: str, procs: dict[str, subprocess.Popen[bytes]]) -> Iterator[None]:
    """With ``BATCHSHIFT_PIPELINE_PROFILE``, py-spy samples every process while the block runs."""
    if not PROFILE_DIR:
        yield
        return
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        raise SystemExit("BATCHSHIFT_PIPELINE_PROFILE needs py-spy: pip install py-spy")
    Path(PROFILE_DIR).mkdir(parents=True, exist_ok=True)
    spies = [
        subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(proc.pid),
                "--format",
                "raw",
                "--nonblocking",
                "--rate",
                str(PROFILE_RATE_HZ),
                "--output",
                str(Path(PROFILE_DIR) / f"{_slug(name)}-{_slug(role)}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for role, proc in procs.items()
    ]
    try:
        yield
    finally:
        for one in spies:
            one.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for one in spies:
            one.wait(timeout=60)


async def start_redis_profile(redis: Redis) -> None:
    """Log every command to the slow log (threshold 0), from empty."""
    await redis.config_set("slowlog-max-len", 5_000_000)
    await redis.config_set("slowlog-log-slower-than", 0)
    await redis.slowlog_reset()


async def write_redis_profile(redis: Redis, name: str) -> None:
    """The slow log's time per command and per Lua script (by name), most first, to a file.

    Commands a script runs are logged too, so a script's time includes theirs."""
    await redis.config_set("slowlog-log-slower-than", 10_000)
    names = {hashlib.sha1(scripts.source(n).encode()).hexdigest(): n for n in scripts.script_names()}  # noqa: S324 -- Redis names scripts by SHA-1
    spent: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()
    entries = await redis.execute_command("SLOWLOG", "GET", "-1")  # type: ignore[no-untyped-call]
    for entry in entries:
        args = entry[3]
        command = args[0].decode().lower()
        if command == "evalsha" and len(args) > 1:
            command = "evalsha " + names.get(args[1].decode(), args[1].decode()[:12])
        spent[command] += entry[2]
        calls[command] += 1
    await redis.slowlog_reset()
    total = sum(spent.values()) or 1
    lines = [f"{name}: {total / 1e6:.3f} s of Redis time logged (a script's includes its commands')"]
    lines += [
        f"{us / 1e6:8.3f} s {100 * us / total:5.1f}% {calls[cmd]:9,d} calls {us / calls[cmd]:9.1f} us/call  {cmd}"
        for cmd, us in spent.most_common()
    ]
    out = Path(PROFILE_DIR, f"{_slug(name)}-redis.txt")
    await asyncio.to_thread(out.write_text, "\n".join(lines) + "\n")


def peak_rss_mb(pid: int) -> float:
    """A live process's resident-set high-water mark (``VmHWM``), in MB."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _payloads(count: int, receiver_url: str) -> list[bytes]:
    def one(n: int) -> dict[str, Any]:
        return job_request(
            "openai",
            {**BODY, "metadata": {"n": n}},
            deadline_in=DEADLINE_S,
            callback_url=f"{receiver_url}/hooks/{TENANT}",
            tags={"feature": "pipeline"},
        )

    return [
        orjson.dumps({"jobs": [one(n) for n in range(start, min(start + CHUNK, count))]})
        for start in range(0, count, CHUNK)
    ]


async def baseline(redis: Redis, count: int) -> float:
    """Raw redis-py: the same job hashes and index entries written pipelined, then read back."""
    now = time.time_ns() // 1_000_000
    jobs = [
        NewJob(
            id=ids.job_id(now),
            tenant=TENANT,
            provider="openai",
            endpoint="/v1/chat/completions",
            model=str(BODY["model"]),
            body=orjson.dumps({**BODY, "metadata": {"n": n}}, option=orjson.OPT_SORT_KEYS),
            deadline_ms=now + DEADLINE_S * 1000,
            created_ms=now,
            tags={"feature": "pipeline"},
            callback_url="http://127.0.0.1:9/hooks/bench",
        )
        for n in range(count)
    ]
    started = time.perf_counter()
    await write_raw(redis, jobs, CHUNK)
    for start in range(0, count, CHUNK):
        async with redis.pipeline(transaction=False) as pipe:
            for job in jobs[start : start + CHUNK]:
                pipe.hgetall(keys.job(job.id))
            await pipe.execute()
    return count / (time.perf_counter() - started)


async def _latencies(redis: Redis) -> list[int]:
    """Every job's enqueue-to-result time in ms, sorted (from its record: created to completed)."""
    ids_ = [raw.decode() for raw in await redis.zrange(keys.tenant_jobs(TENANT), 0, -1)]
    out: list[int] = []
    for start in range(0, len(ids_), CHUNK):
        async with redis.pipeline(transaction=False) as pipe:
            for job_id in ids_[start : start + CHUNK]:
                pipe.hmget(keys.job(job_id), ["created_ms", "completed_ms"])
            for created, completed in await pipe.execute():
                if created and completed:
                    out.append(int(completed) - int(created))
    return sorted(out)


def _quantile(sorted_values: list[int], q: float) -> float:
    return (
        sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))] / 1000
        if sorted_values
        else 0.0
    )


async def _post_all(urls: list[str], payloads: list[bytes]) -> None:
    """Every bulk request, one at a time per API, the APIs in parallel (round robin)."""
    import httpx

    headers = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}

    async def feed(url: str, mine: list[bytes]) -> None:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as http:
            for payload in mine:
                response = await http.post("/v1/jobs/bulk", content=payload)
                response.raise_for_status()

    await asyncio.gather(*(feed(url, payloads[n :: len(urls)]) for n, url in enumerate(urls)))


async def redis_cpu_s(redis: Redis) -> float:
    """The Redis server's CPU time so far (user + system), in seconds."""
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def own_cpu_s() -> float:
    """This process's CPU time so far: posting the jobs and receiving their webhooks."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _flush(redis: Redis) -> None:
    """Empty Redis synchronously: a server that frees lazily (Valkey's default for FLUSHALL) would
    count the last topology's jobs in this one's starting memory."""
    await redis.execute_command("FLUSHALL", "SYNC")


async def measure(name: str, redis_url: str, emulator_url: str, count: int) -> dict[str, Any]:
    """One topology from an empty Redis: jobs/s end to end and the row's other figures."""
    redis = Redis.from_url(redis_url)
    receiver = Receiver(expected=count)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(receiver, host="127.0.0.1", port=port, log_level="error"))
    serving = asyncio.create_task(server.serve())
    try:
        await _flush(redis)
        while not server.started:
            if serving.done():
                raise RuntimeError("the webhook receiver did not start")
            await asyncio.sleep(0.02)
        before = int((await redis.info("memory"))["used_memory"])
        if PROFILE_DIR:
            await start_redis_profile(redis)
        payloads = _payloads(count, f"http://127.0.0.1:{port}")
        with ExitStack() as stack:
            urls, procs = stack.enter_context(topology(name, _settings_env(redis_url, emulator_url)))
            cpu_before = {role: cpu_s(proc.pid) for role, proc in procs.items()}
            cpu_before["redis"] = await redis_cpu_s(redis)
            cpu_before["bench"] = own_cpu_s()
            with sampled(name, procs):
                started = time.perf_counter()
                await _post_all(urls, payloads)
                intake_s = time.perf_counter() - started
                try:
                    await asyncio.wait_for(receiver.done.wait(), TIMEOUT_S)
                except TimeoutError:
                    pass
            rss = {role: peak_rss_mb(proc.pid) for role, proc in procs.items()}
            cpu = {role: cpu_s(proc.pid) - cpu_before[role] for role, proc in procs.items()}
            cpu["redis"] = await redis_cpu_s(redis) - cpu_before["redis"]
            cpu["bench"] = own_cpu_s() - cpu_before["bench"]
        elapsed = (receiver.last or time.perf_counter()) - started
        used = int((await redis.info("memory"))["used_memory"]) - before
        if PROFILE_DIR:
            await write_redis_profile(redis, name)
        latencies = await _latencies(redis)
    finally:
        server.should_exit = True
        await serving
        await redis.aclose()
    delivered = len(receiver.seen)
    return {
        "topology": name,
        "delivered": delivered,
        "throughput": delivered / elapsed,
        "intake": count / intake_s,
        "p50": _quantile(latencies, 0.5),
        "p99": _quantile(latencies, 0.99),
        "rss": rss,
        "cpu_ms_per_job": {role: 1000 * seconds / max(1, delivered) for role, seconds in cpu.items()},
        "redis_per_job": used / max(1, delivered),
        "failed": delivered < count,
    }


async def run() -> list[dict[str, Any]]:
    with embedded_redis() as redis_url, emulator_process(turnaround_s=0.0) as emulator_url:
        redis = Redis.from_url(redis_url)
        try:
            await _flush(redis)
            base = await baseline(redis, JOBS)
        finally:
            await redis.aclose()
        results = [await measure(name, redis_url, emulator_url, JOBS) for name in selected_topologies()]
    rows: list[dict[str, Any]] = [
        {
            "figure": f"pipeline baseline: raw redis-py writes + read-back, {JOBS:,} jobs",
            "throughput": base,
            "unit": "jobs/s",
            "baseline": base,
            "ratio": 1.0,
        }
    ]
    for r in results:
        rss = ", ".join(f"{role} {mb:.0f}" for role, mb in r["rss"].items())
        ours = {role: ms for role, ms in r["cpu_ms_per_job"].items() if role not in ("redis", "bench")}
        cpu = ", ".join(f"{role} {ms:.2f}" for role, ms in ours.items())
        cpu += f" (batchshift {sum(ours.values()):.2f}); Redis {r['cpu_ms_per_job']['redis']:.2f}"
        cpu += f", this client and receiver {r['cpu_ms_per_job']['bench']:.2f}"
        figure = (
            f"pipeline, {r['topology']}: {r['delivered']:,}/{JOBS:,} jobs in, done and delivered "
            f"(intake {r['intake']:,.0f} jobs/s); enqueue->result p50 {r['p50']:.1f} s, p99 {r['p99']:.1f} s; "
            f"peak RSS MB {rss}; CPU ms/job {cpu}; "
            f"Redis {r['redis_per_job']:,.0f} B/job"
        )
        if r["failed"]:
            figure += f" FAILED: not every webhook arrived within {TIMEOUT_S:.0f} s"
        rows.append(
            {
                "figure": figure,
                "throughput": r["throughput"],
                "unit": "jobs/s",
                "baseline": base,
                "ratio": r["throughput"] / base,
                "peak_mb": max(r["rss"].values(), default=0.0),
                "failed": r["failed"],
            }
        )
    return rows


if __name__ == "__main__":
    for row in asyncio.run(run()):
        print(row)
