"""The sync lane: ``run_sync`` sends one job to the provider's synchronous API and writes the answer back.

The scheduler's sync dispatch (scheduler/planning/sync_dispatch.py) hands each job in the sync queue to one
``run_sync(job_id, dispatch)`` at a time, under a lease. A run sends the job's body as is, and on a
retriable failure (429, 529, 5xx, timeouts) hands the job back to the dispatch until a backoff
(or the provider's ``retry-after``) has passed, by moving its lease end; the attempt count lives on
the job (``sync_attempts``), so no arq retry budget cuts the retries short. On a permanent error
(or, when set, after ``settings.worker.sync_max_attempts`` tries) the job fails with the provider's
error. A job whose deadline has passed fails with ``deadline_exceeded`` rather than being sent late. The answer is written through the ledger's guarded ``finish`` (only from ``sync``),
with its usage and cost by route, and the call's latency joins the lane's SLO samples.

:func:`choose_route` is the one decision of route and service tier: flex first where the provider
sells it (``flex = true``) and the deadline leaves ``flex_latency_s``, and a flex 429 ("resource
unavailable") or a flex call still unanswered after ``flex_latency_s`` falls through to standard
sync in the same run. Calls go through the provider's shared limits (:mod:`workers.sync_limits`:
concurrency, requests and tokens per minute, its rate-limit headers); a job that must wait is
handed back to the dispatch without a call. Retriable failures retry until the deadline, the last
wait ending just past it, so the job then fails with ``deadline_exceeded``.

Long calls. A standard call waits ``settings.worker.sync_timeout_s`` for its answer (long
generations outlast the providers' usual 60 s read timeout), and while it runs a heartbeat
(``sync_heartbeat.lua``, every quarter lease) extends the job's dispatch lease, so a call longer
than ``scheduler.sync_lease_s`` is not handed out again and paid twice; a worker that dies stops
beating and the job comes back once the lease ends. A call that may have been billed without an
answer kept (a read timeout; a worker killed mid-call, found by the next dispatch through the
job's ``sync_call`` marker, ``sync_call.lua``) counts its expected price (its body's input tokens
and output cap) into the job's ``sync_wasted_usd``, which the job's finish adds to the wasted-spend
aggregates (``wasted_usd`` in ``/v1/costs``). Leases are stamped with the Redis server's clock.
"""

from __future__ import annotations

import random
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import structlog
from structlog.contextvars import bind_contextvars

from config.settings import HttpSettings, Settings
from scheduler import policy
from scheduler.costs import pricing, tokens
from scheduler.ledger import keys, samples, scripts, tasks
from scheduler.ledger.heartbeat import heartbeat
from scheduler.ledger.jobs import JobRecord, Route
from scheduler.ledger.ledger import Finish
from workers import traces
from workers.context import WorkerContext, tracing_of
from workers.errors import ProviderError, ProviderHTTPError, RateLimited, ResponseTimeout
from workers.providers.base import ProviderAdapter, SyncResult
from workers.summary import note, summarised
from workers.sync_limits import Permit, SyncLimits
from workers.tasks.outcomes import SyncOutcome

log = structlog.get_logger(__name__)

# Seconds past the deadline the last retry waits, so that run finds the deadline passed.
DEADLINE_SLACK_S = 0.05
# Heartbeats per dispatch lease while a call runs: a beat may come late by most of a lease.
HEARTBEATS_PER_LEASE = 4
_rng = random.Random()  # jitter of sync retries


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """How one attempt is sent: the route it is accounted under and the provider's service tier."""

    route: Route
    service_tier: str | None = None


def choose_route(settings: Settings, job: JobRecord, attempt: int, now_ms: int) -> RoutePlan:
    """The route and tier of this attempt: flex first where the provider sells it at batch price and
    the deadline leaves room for flex's slower answers, else the standard sync API."""
    provider = settings.providers.get(job.provider)
    if provider is not None and provider.flex and now_ms + provider.flex_latency_s * 1000 <= job.deadline_ms:
        return RoutePlan("flex", "flex")
    return RoutePlan("sync")


def read_timeout_s(settings: Settings, job: JobRecord, plan: RoutePlan) -> float:
    """How long a call of this plan waits for its answer: flex its expected latency (then standard
    sync is tried), standard sync its own long timeout."""
    provider = settings.providers.get(job.provider)
    if plan.route == "flex" and provider is not None:
        return min(provider.flex_latency_s, settings.worker.sync_timeout_s)
    return settings.worker.sync_timeout_s


def _priced_model(settings: Settings, job: JobRecord) -> str:
    """The model the job's ``model`` runs (an Azure deployment's), as prices name it."""
    provider = settings.providers.get(job.provider)
    return provider.priced_model(job.model) if provider is not None else job.model


def expected_usd(settings: Settings, kind: str, job: JobRecord, route: Route) -> float:
    """What one call may be billed: the body's input tokens and its output cap, at the route's price."""
    inputs, outputs = tokens.estimate(job.body)
    usage = {"input_tokens": inputs, "output_tokens": outputs}
    model = _priced_model(settings, job)
    price = pricing.shared(settings.pricing_file).job_cost(job.provider, kind, model, route, usage)
    return price.actual_usd or 0.0


@dataclass(slots=True)
class SyncCall:
    """One run's calls of one job: each under the job's in-flight marker, its lease kept alive."""

    c: WorkerContext
    job: JobRecord
    dispatch: int
    adapter: ProviderAdapter
    wasted_usd: float = 0.0  # the job's possibly billed spend so far (``sync_wasted_usd``)
    permit: Permit | None = None  # the concurrency slot, renewed with the lease

    async def _mark(self, mode: str, usd: float = 0.0) -> None:
        marker = scripts.load(self.c["redis"], "sync_call")
        total = await marker(keys=[keys.job(self.job.id)], args=[mode, self.dispatch, repr(usd)])
        self.wasted_usd = float(total)

    async def adopt(self) -> None:
        """Count a call an earlier dispatch started and never saw end (its worker died) as wasted."""
        before = float(self.job.raw.get("sync_wasted_usd", b"0"))
        await self._mark("adopt")
        if self.wasted_usd > before:
            log.warning("sync.orphan_call_counted", wasted_usd=round(self.wasted_usd - before, 9))

    async def send(self, plan: RoutePlan) -> SyncResult:
        """One provider call; a timed-out one counts its expected price as wasted."""
        settings, job = self.c["settings"], self.job
        expected = expected_usd(settings, self.adapter.kind, job, plan.route)
        await self._mark("begin", expected)
        try:
            async with self._heartbeat():
                tracing = tracing_of(self.c)
                with traces.sync_call_span(
                    tracing, self.adapter.kind, job, plan.route, plan.service_tier
                ) as span:
                    answer = await self.adapter.send_sync(
                        job.endpoint,
                        job.body,
                        service_tier=plan.service_tier,
                        max_retries=0,
                        read_timeout=read_timeout_s(settings, job, plan),
                    )
                    if tracing.enabled:
                        span.set(**traces.usage_attributes(answer.usage, answer.headers))
        except ResponseTimeout:
            await self._mark("end", expected)  # sent, maybe answered and billed, never received
            raise
        except ProviderError:
            await self._mark("end")
            raise
        await self._mark("end")
        return answer

    async def routed(self, plan: RoutePlan) -> tuple[SyncResult, RoutePlan]:
        """Send on the planned route; a flex 429 ("resource unavailable") or a flex call unanswered
        after ``flex_latency_s`` falls through to standard sync."""
        if plan.route == "flex":
            try:
                return await self.send(plan), plan
            except (RateLimited, ResponseTimeout) as exc:
                event = "sync.flex_unavailable" if isinstance(exc, RateLimited) else "sync.flex_timed_out"
                log.info(event, error=str(exc))
                plan = RoutePlan("sync")
        return await self.send(plan), plan

    def _heartbeat(self) -> AbstractAsyncContextManager[None]:
        """Extend the dispatch lease while the call runs (until the dispatch is no longer current)."""
        redis, lease_s = self.c["redis"], self.c["settings"].scheduler.sync_lease_s
        extend = scripts.load(redis, "sync_heartbeat")
        call_keys = [keys.SYNC_LEASES, keys.SYNC_DISPATCHES, keys.job(self.job.id)]
        slot = [] if self.permit is None else [self.permit.token]
        if self.permit is not None:
            call_keys.append(keys.sync_slots(self.permit.provider))

        async def beat() -> bool:
            # False once superseded, or the job left the sync lane: nothing to keep.
            lease_end = await self.c["clock"].now_ms() + int(lease_s * 1000)
            return bool(await extend(keys=call_keys, args=[self.job.id, self.dispatch, lease_end, *slot]))

        return heartbeat(beat, lease_s / HEARTBEATS_PER_LEASE, immediate=True, name="sync")


def backoff_s(settings: Settings, provider: str, attempt: int, exc: ProviderError) -> float:
    """Seconds before retry ``attempt + 1``: the provider's ``retry-after``, else exponential with jitter."""
    if isinstance(exc, ProviderHTTPError) and exc.retry_after is not None:
        return exc.retry_after
    configured = settings.providers.get(provider)
    http = configured.http if configured is not None else HttpSettings()
    return policy.backoff(attempt - 1, http.backoff_base, http.backoff_max, _rng)


def error_of(exc: ProviderError) -> dict[str, Any]:
    """A provider error as the job's ``error`` field shows it."""
    if isinstance(exc, ProviderHTTPError):
        return {"type": exc.type, "message": exc.message, "status": exc.status}
    return {"type": type(exc).__name__, "message": str(exc)}


@summarised(tasks.RUN_SYNC)
async def run_sync(c: WorkerContext, job_id: str, dispatch: int = 0) -> SyncOutcome:
    """arq task: send one sync job and finish it; returns what happened (for logs and tests)."""
    bind_contextvars(job_id=job_id)
    redis, settings, ledger = c["redis"], c["settings"], c["ledger"]
    current = await redis.hget(keys.SYNC_DISPATCHES, job_id)  # type: ignore[misc]
    if dispatch and current is not None and int(current) != dispatch:
        note(dispatch=dispatch, current=int(current))
        return SyncOutcome.SUPERSEDED
    job = await ledger.get(job_id)
    if job is None or job.state != "sync":
        await _release(c, job_id)
        if job is None:
            return SyncOutcome.MISSING
        note(state=job.state)
        return SyncOutcome.SKIPPED
    bind_contextvars(lane=job.lane, provider=job.provider)
    attempt = int(job.raw.get("sync_attempts", b"0")) + 1
    adapter = c["adapters"][job.provider]
    call = SyncCall(c, job, dispatch, adapter)
    await call.adopt()
    clock = c["clock"]
    now_ms = await clock.now_ms()
    if now_ms > job.deadline_ms:
        error = {"type": "deadline_exceeded", "message": "the deadline passed before the job could be sent"}
        item = Finish(
            job_id, "failed", "sync", from_states=("sync",), error=error, wasted_usd=call.wasted_usd
        )
        return await _finish(c, item)
    plan = choose_route(settings, job, attempt, now_ms)
    limits = SyncLimits(redis, clock)
    config = settings.providers.get(job.provider)
    permit: Permit | float | None = None
    if config is not None:
        # The slot lives as long as the lease, and the heartbeat renews both while the call runs.
        lease_s = settings.scheduler.sync_lease_s
        permit = await limits.acquire(job.provider, config, job.body, now_ms, slot_s=lease_s)
    if isinstance(permit, float):
        return await _later(c, job, permit)
    call.permit = permit
    started_ms = await clock.now_ms()  # the shared clock: a virtual one in tests, so no machine speed counts
    try:
        answer, plan = await call.routed(plan)
    except ProviderError as exc:
        if isinstance(exc, RateLimited) and exc.retry_after:
            await limits.hold(job.provider, exc.retry_after)
        await redis.hincrby(keys.job(job_id), "sync_attempts", 1)  # type: ignore[misc]
        cap = settings.worker.sync_max_attempts
        if exc.retriable and (cap is None or attempt < cap):
            # Retry until the deadline: a wait that would end past it ends just past it instead,
            # so that run fails the job with deadline_exceeded (late, as the SLO counts it).
            remaining = max(0.0, (job.deadline_ms - await clock.now_ms()) / 1000)
            delay = min(backoff_s(settings, job.provider, attempt, exc), remaining + DEADLINE_SLACK_S)
            return await _later(c, job, delay, attempt=attempt, error=str(exc))
        item = Finish(
            job_id,
            "failed",
            plan.route,
            from_states=("sync",),
            error=error_of(exc),
            wasted_usd=call.wasted_usd,
        )
        return await _finish(c, item, error=str(exc))
    finally:
        if permit is not None:
            await limits.release(permit)
    await limits.observe(job.provider, answer.headers)
    cost = pricing.shared(settings.pricing_file).job_cost(
        job.provider, adapter.kind, _priced_model(settings, job), plan.route, answer.usage
    )
    item = Finish(
        job_id,
        "succeeded",
        plan.route,
        from_states=("sync",),
        result=answer.body,
        usage=answer.usage,
        billed=True,
        wasted_usd=call.wasted_usd,
        **cost.finish_fields(),
    )
    end_ms = await clock.now_ms()
    seconds = (end_ms - started_ms) / 1000
    async with redis.pipeline(transaction=True) as pipe:
        samples.push_sample(
            pipe, keys.lane_sync_latencies(job.lane), end_ms, seconds, settings.slo.history_size
        )
        await pipe.execute()
    return await _finish(c, item, seconds=round(seconds, 3))


async def _finish(c: WorkerContext, item: Finish, **info: Any) -> SyncOutcome:
    """Finish the job (guarded: only from ``sync``); the summary tells the route and the ledger's answer."""
    [code] = await c["ledger"].finish([item], await c["clock"].now_ms())
    await _release(c, item.id)
    note(route=item.route, finish=code, **info)
    if code == "ok":
        return SyncOutcome(item.state)
    return SyncOutcome.MISSING if code == "missing" else SyncOutcome.SKIPPED


async def _later(c: WorkerContext, job: JobRecord, delay: float, **info: Any) -> SyncOutcome:
    """Hand the job back to the dispatch for ``delay`` seconds (its lease ends then): waiting for the
    provider's limits costs no provider call and no attempt."""
    until = await c["clock"].now_ms() + int(delay * 1000)
    await c["redis"].zadd(keys.SYNC_LEASES, {job.id: until}, xx=True)
    note(delay=round(delay, 3), **info)
    return SyncOutcome.DEFERRED


async def _release(c: WorkerContext, job_id: str) -> None:
    """End the job's dispatch lease now; the dispatch step forgets it once it has left the sync queue."""
    await c["redis"].zadd(keys.SYNC_LEASES, {job_id: await c["clock"].now_ms()}, xx=True)
