"""Sibling failover: a lagging or quota-full lane's waiting jobs move to a healthy sibling lane's
next batch, before the flip step could send them to flex or sync.

Which jobs move where is :mod:`scheduler.slo.sibling_plan` (pure); here the lane's queue and its
stalled batches' deadline indexes (``keys.batch_deadlines``, as the flip step reads them) are read,
each job's body is adapted to the sibling's model name (an Azure deployment, another host's name
for the model), and the ledger's guarded ``relane`` step moves it. A job taken from a stalled batch
leaves that batch's deadline index, so the flip step neither flips it nor waits for it; a batch
left empty is cancelled by the flip step as a batch whose jobs all flipped is, and its late answer
for a moved job is duplicate spend. A tick looks at most at ``settings.slo.max_flips_per_tick`` jobs per
place (the earliest due); the rest move on later ticks. Jobs a sibling sent here move no further,
and count against that look.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import orjson
import structlog
from redis.asyncio import Redis

from config.settings import Settings
from config.tracing import OFF, Tracing
from scheduler.ledger import keys
from scheduler.ledger.ledger import Ledger, Relane
from scheduler.planning import prefixes
from scheduler.slo import sibling_plan
from scheduler.slo.flips import ensure_deadline_index
from scheduler.slo.prediction import LanePrediction
from scheduler.slo.sibling_plan import LaneLoad, Sibling

log = structlog.get_logger(__name__)

# Jobs moved per ledger call: one guarded step each, a chunk per round trip.
RELANE_CHUNK = 500


@dataclass(slots=True)
class FailoverReport:
    """What failover did for one lane this tick."""

    moved: dict[str, int] = field(default_factory=dict)  # sibling lane -> jobs moved there
    from_batches: int = 0  # of them, taken from stalled batches

    @property
    def total(self) -> int:
        return sum(self.moved.values())


def lane_parts(lane: str) -> tuple[str, str, str]:
    """(provider, model, endpoint) of a configured sibling lane's name (settings validated its form)."""
    provider, _, rest = lane.partition(":")
    model, _, endpoint = rest.rpartition(":")
    return provider, model, endpoint


def adapted_body(body: bytes, model: str) -> bytes | None:
    """``body`` naming ``model`` instead of the model it names; None when it names none, or that one."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(parsed, dict) or "model" not in parsed or parsed["model"] == model:
        return None
    parsed["model"] = model
    return orjson.dumps(parsed)


def sibling_prefix(settings: Settings, body: bytes, lane: str) -> str | None:
    """The prefix key a job of ``body`` takes on sibling ``lane`` (by that lane's own prefix settings,
    so it groups with the sibling's own jobs); None when the body cannot be read (the key stays)."""
    provider, _, endpoint = lane_parts(lane)
    account = settings.providers.get(provider)
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if account is None or not isinstance(parsed, dict):
        return None
    return prefixes.for_lane(settings, lane, parsed, len(body), kind=account.kind, endpoint=endpoint)


SiblingLookup = Callable[[str], Awaitable[Sibling | None]]


class Failover:
    """Moves waiting jobs of lagging lanes to healthy siblings, one lane at a time."""

    def __init__(self, redis: Redis, ledger: Ledger, settings: Settings, tracing: Tracing = OFF) -> None:
        self.redis = redis
        self.ledger = ledger
        self.settings = settings
        self.tracing = tracing

    async def held(self, lane: str, now_ms: int) -> bool:
        """Whether the lane is held after a token-limit refusal (its enqueued-token quota is full)."""
        until = await self.redis.get(keys.lane_hold(lane))
        return until is not None and int(until) > now_ms

    async def run(
        self, load: LaneLoad, prediction: LanePrediction, lookup: SiblingLookup, now_ms: int
    ) -> FailoverReport:
        """Move what should move from ``load``'s lane; ``lookup`` gives a sibling lane as a destination."""
        report = FailoverReport()
        slo = self.settings.slo
        names = self.settings.siblings_of(load.lane)
        if not names or not sibling_plan.lags(load):
            return report
        found = [await lookup(name) for name in names]
        siblings = [s for s in found if s is not None and s.healthy]
        if not siblings:
            return report
        budget = slo.max_flips_per_tick
        for batch in prediction.batches:
            b = batch.batch
            if b.submitted_ms is None or b.ended_ms is not None:
                continue
            if batch.elapsed_s <= load.stall_after_s:
                continue
            index = await ensure_deadline_index(self.redis, b.id)
            budget -= await self._move(index, load.lane, siblings, now_ms, budget, report, batch_id=b.id)
        if prediction.next_flush_ms is not None and budget > 0:
            await self._move(keys.lane_queue(load.lane), load.lane, siblings, now_ms, budget, report)
        if report.moved:
            log.info("jobs.relaned", lane=load.lane, moved=report.moved, from_batches=report.from_batches)
        return report

    async def _move(
        self,
        zset: str,
        lane: str,
        siblings: Sequence[Sibling],
        now_ms: int,
        budget: int,
        report: FailoverReport,
        batch_id: str | None = None,
    ) -> int:
        """Move the jobs of ``zset`` (a lane queue, or a batch's deadline index) that a sibling fits,
        earliest deadline first; returns how many moved."""
        if budget <= 0:
            return 0
        rows = await self.redis.zrange(zset, 0, budget - 1, withscores=True)
        if not rows:
            return 0
        ids = [m.decode() for m, _ in rows]
        targets = sibling_plan.destinations([int(s) for _, s in rows], siblings, now_ms)
        chosen = [(j, t) for j, t in zip(ids, targets, strict=True) if t is not None]
        if not chosen:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id, _ in chosen:
                pipe.hmget(keys.job(job_id), ["body", "relanes"])
            rows = await pipe.execute()
        items = []
        for (job_id, to), (body, relanes) in zip(chosen, rows, strict=True):
            if relanes is not None:
                continue  # moved here from a sibling: it moves once at most (relane.lua holds the rule)
            provider, model, endpoint = lane_parts(to)
            adapted = adapted_body(body, model) if body else None
            items.append(
                Relane(
                    job_id,
                    lane,
                    to,
                    provider,
                    model,
                    endpoint,
                    from_states=("batched",) if batch_id else ("queued",),
                    batch_id=batch_id,
                    body=adapted,
                    prefix=sibling_prefix(self.settings, adapted or body, to) if body else None,
                )
            )
        moved = 0
        for start in range(0, len(items), RELANE_CHUNK):
            chunk = items[start : start + RELANE_CHUNK]
            codes = await self.ledger.relane(chunk, now_ms)
            done = [item for item, code in zip(chunk, codes, strict=True) if code == "ok"]
            for item in done:
                report.moved[item.to] = report.moved.get(item.to, 0) + 1
            moved += len(done)
            if self.tracing.enabled and done:
                await self._trace(done, batch_id)
            if batch_id is not None:
                # Moved, finished or flipped: none of them is this batch's to wait for any more.
                await self.redis.zrem(zset, *(item.id for item in chunk))
        if batch_id is not None:
            report.from_batches += moved
        return moved

    async def _trace(self, moved: Sequence[Relane], batch_id: str | None) -> None:
        """A ``job.relane`` span in each moved job's trace (tracing on only: one read per job)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for item in moved:
                pipe.hmget(keys.job(item.id), ["traceparent", "tracestate"])
            rows = await pipe.execute()
        for item, (parent, state) in zip(moved, rows, strict=True):
            with self.tracing.span(
                "job.relane",
                parent=parent.decode() if parent else None,
                tracestate=state.decode() if state else None,
                attributes={
                    "batchshift.job_id": item.id,
                    "batchshift.lane": item.lane,
                    "batchshift.sibling_lane": item.to,
                    "batchshift.batch_id": batch_id,
                },
            ):
                pass
