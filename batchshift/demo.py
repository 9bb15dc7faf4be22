"""``make demo``: batchshift's whole job on one machine, in about two minutes.

It starts an embedded redis-server (unless ``BATCHSHIFT_REDIS_URL`` is set), the provider emulator,
local receivers for completion webhooks and PagerDuty, and ``batchshift run`` as its own process;
then it submits waves of jobs for several tenants and features across OpenAI and Anthropic lanes.
Midway it stalls one lane in the emulator, so the SLO tracker flips that lane's jobs at risk and
pages on-call; later it lifts the stall so the page resolves. The report at the end is read from
batchshift's own API; the exit status is 0 only if every job ended and the on-time ratio met the SLO.
Time is scaled down: turnarounds of seconds stand for hours, deadlines of a minute or two for a day.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvicorn
from redis.asyncio import Redis
from rich.console import Console
from rich.live import Live
from rich.table import Table

from batchshift.client import BatchshiftClient, Job
from batchshift.demo_receivers import Inbox, receivers_app
from batchshift.demo_report import Outcome, oracle_actual_usd, report, timestamp
from batchshift.demo_workload import FEATURES, STALLED_MODEL, Wave, wave_requests
from batchshift.embedded_redis import ProcessDied, RunningServer, ServerKind, free_port, running_server
from batchshift.server_version import ServerError, check_server
from config.tracing import ENDPOINT_VARS, endpoint_configured
from emulator.server import EmulatorControl, running_emulator

ADMIN_KEY = "demo-admin-" + secrets.token_hex(8)
# Batches take 4 s (a day, scaled down); a fifth of flex calls find no flex capacity (429) and
# fall through to standard sync, as they do on a busy day.
EMULATOR_CONFIG = {"turnaround_s": {"*": 4.0}, "flex_unavailable": 0.2}


@dataclass(frozen=True, slots=True)
class Plan:
    """The demo's timeline (seconds from the first wave) and workload size."""

    jobs: int = 900
    stall_at: float = 12.0
    # Long enough that batches stalled since stall_at outlast the nearest deadlines (about a minute
    # out): those jobs must flip; the rest wait for their batch, which ends once the stall lifts.
    lift_at: float = 80.0
    give_up_at: float = 160.0  # stop waiting for stragglers and report what is there

    def waves(self) -> list[tuple[float, Wave]]:
        """(when, wave): a calm start, a wave during the stall, a wave after it."""
        first, second = int(self.jobs * 0.45), int(self.jobs * 0.35)
        return [
            (0.0, Wave("calm", first, (60, 150))),
            (self.stall_at + 2, Wave("stall", second, (45, 100))),
            (self.lift_at + 2, Wave("recovery", self.jobs - first - second, (40, 90))),
        ]


def _tenants() -> dict[str, dict[str, Any]]:
    return {
        tenant: {"api_key": f"demo-{tenant}-" + secrets.token_hex(8), "webhook_secrets": [_whsec()]}
        for tenant in FEATURES
    }


def _whsec() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def node_environment(
    redis_url: str, emulator: str, receivers: str, tenants: dict[str, Any]
) -> dict[str, str]:
    """The ``batchshift run`` process's settings, all from the environment (no config file)."""

    def js(value: Any) -> str:
        return orjson.dumps(value).decode()

    provider_common = {"api_key": "sk-demo-emulator", "completion_window_s": 90}
    settings = {
        "BATCHSHIFT_CONFIG": "",
        "BATCHSHIFT_REDIS_URL": redis_url,
        "BATCHSHIFT_ADMIN_API_KEY": ADMIN_KEY,
        "BATCHSHIFT_TENANTS": js(tenants),
        "BATCHSHIFT_PROVIDERS": js(
            {
                "openai": {"kind": "openai", "base_url": f"{emulator}/v1", "flex": True, "flex_latency_s": 5}
                | provider_common,
                "anthropic": {"kind": "anthropic", "base_url": emulator} | provider_common,
                "gemini": {"kind": "gemini", "base_url": emulator} | provider_common,
            }
        ),
        "BATCHSHIFT_LANE_DEFAULTS": js({"max_wait": 3, "default_deadline": 120}),
        "BATCHSHIFT_SCHEDULER": js(
            {
                "tick_interval_s": 0.5,
                "lease_ttl_s": 3,
                "poll_initial_s": 1,
                "poll_max_s": 2,
                "poll_backoff": 1.3,
                "planned_timeout_s": 15,
                "reconcile_interval_s": 10,
            }
        ),
        "BATCHSHIFT_SLO": js(
            {
                "prior_turnaround_s": 10,
                "min_samples": 3,
                "bucket_s": 1,
                "default_sync_latency_s": 2,
                "sync_share_window_s": 60,
                "burn_rules": [
                    {"severity": "page", "factor": 14.4, "long_window_s": 60, "short_window_s": 10},
                    {"severity": "page", "factor": 6, "long_window_s": 120, "short_window_s": 30},
                    {"severity": "ticket", "factor": 1, "long_window_s": 600, "short_window_s": 120},
                ],
            }
        ),
        "BATCHSHIFT_ALERTS": js(
            {
                "pagerduty": {"routing_key": "demo-routing-key", "url": f"{receivers}/pagerduty"},
                "resolve_after_s": 8,
                "renotify_s": 600,
                "retry_schedule_s": [1, 2, 5],
            }
        ),
        "BATCHSHIFT_WEBHOOKS": js({"retry_schedule_s": [1, 2, 5, 10]}),
        "BATCHSHIFT_WEBHOOK_ALLOWLIST": js(["127.0.0.1/32"]),
        "BATCHSHIFT_LOG_FORMAT": "json",
        "BATCHSHIFT_LOG_LEVEL": "WARNING",
    }
    if endpoint_configured(os.environ):  # traces to the collector named (the OTEL_* pass through)
        settings["BATCHSHIFT_TRACING__ENABLED"] = os.environ.get("BATCHSHIFT_TRACING__ENABLED", "true")
        settings["OTEL_SERVICE_NAME"] = os.environ.get("OTEL_SERVICE_NAME", "batchshift-demo")
    return {**os.environ, **settings}


def _collector(env: dict[str, str]) -> str:
    """Where the node's spans go, as the standard variables name it (most specific first)."""
    for name in ENDPOINT_VARS:
        if env.get(name):
            return env[name]
    return "the OTLP default endpoint"


@contextlib.contextmanager
def _redis(kind: ServerKind, log_path: Path) -> Iterator[tuple[str, RunningServer | None]]:
    """``BATCHSHIFT_REDIS_URL`` when set, else a server of ``kind`` for the demo's lifetime."""
    configured = os.environ.get("BATCHSHIFT_REDIS_URL")
    if configured:
        yield configured, None
        return
    with running_server(kind=kind, log_path=log_path) as server:
        yield server.url, server


@contextlib.asynccontextmanager
async def _receivers(tenants: dict[str, Any], inbox: Inbox) -> AsyncIterator[str]:
    """The webhook and PagerDuty receivers, served on this event loop."""
    port = free_port()
    secrets_by_tenant = {t: cfg["webhook_secrets"][0] for t, cfg in tenants.items()}
    server = uvicorn.Server(
        uvicorn.Config(
            receivers_app(secrets_by_tenant, inbox), host="127.0.0.1", port=port, log_level="error"
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            raise RuntimeError("the demo's receivers did not start")
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@dataclass
class NodeExit:
    """How ``batchshift run`` ended after the demo's SIGTERM (None while running, or if killed)."""

    code: int | None = None
    process: subprocess.Popen[bytes] | None = None  # while it runs: checked for an early death


@contextlib.asynccontextmanager
async def _node(env: dict[str, str], port: int, log_path: Path, exit_: NodeExit) -> AsyncIterator[str]:
    """``batchshift run`` as its own process; stopped with SIGTERM (a graceful shutdown) at the end."""
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(  # noqa: ASYNC220 - started once, waited for below without blocking the loop
            [sys.executable, "-m", "batchshift.cli", "run", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        exit_.process = proc
        try:
            await _wait_ready(url, proc, log_path)
            yield url
        finally:
            exit_.process = None
            proc.terminate()
            for _ in range(300):
                if proc.poll() is not None:
                    exit_.code = proc.returncode
                    break
                await asyncio.sleep(0.1)
            else:
                proc.kill()


async def _wait_ready(url: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(300):
            if proc.poll() is not None:
                raise ProcessDied("batchshift run", proc.returncode, str(log_path))
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"{url}/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError("batchshift run did not become ready")


class Demo:
    """One demo run: drive the workload, show progress, and collect the report."""

    def __init__(self, plan: Plan, console: Console, redis_server: ServerKind = "auto") -> None:
        self.plan = plan
        self.console = console
        self.redis_server = redis_server
        self.server: RunningServer | None = None
        self.tenants = _tenants()
        self.inbox = Inbox()
        self.submitted: dict[str, list[str]] = {t: [] for t in self.tenants}
        self.outcome = Outcome()
        self._by_sync: list[tuple[str, int, float]] = []  # (job id, deadline ms, sync-equivalent $)
        self.node_exit = NodeExit()
        self.phase = "starting"
        self.rng = random.Random(7)  # noqa: S311 - a reproducible workload, not a secret
        # Each run's own log directory, so two demos on one machine never write to the same logs.
        self.log_dir = Path(tempfile.mkdtemp(prefix="batchshift-demo-"))
        self.node_log = self.log_dir / "node.log"
        self.redis_log = self.log_dir / "redis.log"

    async def run(self) -> Outcome:
        """Run the demo; raises ProcessDied (one line) if a process it started dies on the way."""
        with _redis(self.redis_server, self.redis_log) as (redis_url, self.server):
            try:
                await self._check_redis(redis_url)
                with running_emulator(EMULATOR_CONFIG) as emulator:
                    async with self._stack(redis_url, emulator) as api:
                        await self._drive(api, EmulatorControl(emulator))
                        await self._collect(api)
                        await self._oracle(redis_url)
            except Exception:
                self.check_processes()  # a dead process explains the error better than its traceback
                raise
        return self.outcome

    async def _check_redis(self, url: str) -> None:
        client = Redis.from_url(url)
        try:
            found = await check_server(client, where="Redis at BATCHSHIFT_REDIS_URL")
        finally:
            await client.aclose()
        server = self.server
        where = f"pid {server.process.pid}, log in {server.log_path}" if server else "BATCHSHIFT_REDIS_URL"
        self.console.print(f"Redis: {found} ({where})", soft_wrap=True)

    def check_processes(self) -> None:
        """Raise ProcessDied if the demo's Redis or ``batchshift run`` has exited."""
        if self.server is not None:
            self.server.check()
        node = self.node_exit.process
        if node is not None and node.poll() is not None:
            raise ProcessDied("batchshift run", node.returncode, str(self.node_log))

    @contextlib.asynccontextmanager
    async def _stack(self, redis_url: str, emulator: str) -> AsyncIterator[str]:
        async with _receivers(self.tenants, self.inbox) as receivers:
            env = node_environment(redis_url, emulator, receivers, self.tenants)
            self.callback_base = receivers
            self.console.print(f"batchshift run: logs in {self.node_log}")
            if env.get("BATCHSHIFT_TRACING__ENABLED") == "true":
                self.console.print(
                    f"Tracing: spans of service {env['OTEL_SERVICE_NAME']} go to {_collector(env)}"
                )
            async with _node(env, free_port(), self.node_log, self.node_exit) as api:
                yield api

    async def _drive(self, api: str, emulator: EmulatorControl) -> None:
        start = time.monotonic()
        waves = self.plan.waves()
        stalled = lifted = False
        with Live(self._progress(0.0, {}, Counter()), console=self.console, refresh_per_second=2) as live:
            while True:
                elapsed = time.monotonic() - start
                while waves and waves[0][0] <= elapsed:
                    _, wave = waves.pop(0)
                    self.phase = f"wave {wave.name!r}"
                    await self._submit(api, wave)
                if not stalled and elapsed >= self.plan.stall_at:
                    emulator.configure(stall=[STALLED_MODEL])
                    stalled, self.phase = True, f"{STALLED_MODEL} batch lane stalled"
                if stalled and not lifted and elapsed >= self.plan.lift_at:
                    emulator.configure(stall=[])
                    lifted, self.phase = True, "stall lifted"
                lanes, routes = await self._figures(api)
                live.update(self._progress(elapsed, lanes, routes))
                ended = sum(routes.values())
                if not waves and lifted and ended >= self._total() and not self.inbox.open_incidents():
                    await self._settle_webhooks()
                    return
                if elapsed > self.plan.give_up_at:
                    self.console.print("[yellow]gave up waiting; reporting what there is[/]")
                    return
                self.check_processes()
                await asyncio.sleep(1.0)

    def _total(self) -> int:
        return sum(len(ids) for ids in self.submitted.values())

    async def _submit(self, api: str, wave: Wave) -> None:
        for tenant, requests in wave_requests(wave, self.rng, self.callback_base).items():
            async with BatchshiftClient(api, self.tenants[tenant]["api_key"]) as client:
                for entry in await client.enqueue_many(requests):
                    if isinstance(entry, Job):
                        self.submitted[tenant].append(entry.id)
                        if entry.callback_url:
                            self.outcome.webhooks_expected += 1
                    else:
                        self.outcome.refused += 1

    async def _figures(self, api: str) -> tuple[dict[str, str], Counter[str]]:
        headers = {"authorization": f"Bearer {ADMIN_KEY}"}
        async with httpx.AsyncClient(base_url=api, headers=headers, timeout=10) as http:
            lanes = (await http.get("/v1/lanes")).json().get("data", [])
            costs = (await http.get("/v1/costs", params={"group_by": "route"})).json()
        states = {lane["lane"]: lane["state"] or "-" for lane in lanes}
        routes = Counter({group["key"]: int(group["jobs"]) for group in costs.get("groups", [])})
        return states, routes

    async def _settle_webhooks(self) -> None:
        """Give deliveries in flight a few seconds to land before counting them."""
        for _ in range(20):
            if len(self.inbox.webhook_ids) >= self.outcome.webhooks_expected:
                return
            await asyncio.sleep(0.5)

    def _progress(self, elapsed: float, lanes: dict[str, str], routes: Counter[str]) -> Table:
        table = Table(title=f"batchshift demo · {elapsed:5.1f} s · {self.phase}", show_header=False)
        table.add_column(justify="right", style="bold")
        table.add_column()
        ended = sum(routes.values())
        table.add_row("jobs", f"{ended} ended of {self._total()} submitted")
        table.add_row("routes", ", ".join(f"{r} {n}" for r, n in sorted(routes.items())) or "-")
        style = {"healthy": "green", "lagging": "yellow", "breaching": "bold red"}
        for lane, state in sorted(lanes.items()):
            table.add_row(lane, f"[{style.get(state, '')}]{state}[/]")
        actions = self.inbox.page_actions()
        table.add_row("pages", f"{actions['trigger']} triggered, {actions['resolve']} resolved")
        table.add_row("webhooks", f"{len(self.inbox.webhook_ids)} delivered, {self.inbox.bad_signatures} bad")
        return table

    async def _oracle(self, redis_url: str) -> None:
        """The oracle's spend on this same run, from what happened (batchshift.demo_report)."""
        total = self.outcome.costs_by_feature.get("total", {})
        async with Redis.from_url(redis_url) as redis:
            self.outcome.oracle_actual_usd, self.outcome.needless_flips = await oracle_actual_usd(
                redis, self._by_sync, float(total.get("actual_usd") or 0.0)
            )

    async def _collect(self, api: str) -> None:
        out = self.outcome
        self._by_sync = []
        for cfg in self.tenants.values():
            async with BatchshiftClient(api, cfg["api_key"]) as client:
                async for job in client.iter_jobs(page_size=500):
                    out.jobs += 1
                    out.statuses[job.status] += 1
                    if job.completed_at is None:
                        continue
                    out.ended += 1
                    out.routes[job.route or "-"] += 1
                    if job.route == "sync" and job.cost:
                        deadline_ms = int(timestamp(job.deadline) * 1000)
                        self._by_sync.append((job.id, deadline_ms, float(job.cost["sync_equivalent_usd"])))
                    if timestamp(job.completed_at) <= timestamp(job.deadline):
                        out.on_time += 1
        async with httpx.AsyncClient(base_url=api, headers={"authorization": f"Bearer {ADMIN_KEY}"}) as http:
            out.costs_by_feature = (await http.get("/v1/costs", params={"group_by": "feature"})).json()
        out.pages = self.inbox.page_actions()
        out.open_incidents = len(self.inbox.open_incidents())
        out.webhooks_delivered = len(self.inbox.webhook_ids)
        out.bad_signatures = self.inbox.bad_signatures


def main(jobs: int = 900) -> int:
    """Run the demo; 0 only if every job ended and the on-time ratio met the SLO.

    A process it started that dies (Redis, ``batchshift run``), or a Redis it cannot use, ends it
    with one line saying so (and where the log is), never a traceback.
    """
    console = Console()
    plan = Plan(jobs=jobs)
    try:
        outcome = asyncio.run(Demo(plan, console).run())
    except ServerError as exc:
        console.print(f"[bold red]batchshift demo: {exc}[/]", highlight=False, soft_wrap=True)
        return 1
    report(outcome, console)
    return 0 if outcome.ok else 1
