"""Retention: what ended long enough ago leaves Redis, so memory stays bounded however long we run.

A job's request body goes when the job ends and its record carries a TTL (finish.lua, cancel.lua).
What points at records, and what no TTL can reach, is trimmed here by :meth:`Retention.trim`, a
function of the clock that the scheduler runs as its ``retention`` step every
``scheduler.reconcile_interval_s``:

- per-tenant job indexes (all jobs, per state, per feature) of every tenant that has any, configured
  or not: ids older than ``retention.job_ttl_s`` whose record is gone leave them; a record that
  ended before the cutoff is deleted with them;
- webhook deliveries created before the cutoff that are over (delivered, dead, disabled);
- dead letters older than ``retention.dead_letter_ttl_s`` or past ``retention.dead_letter_max``;
- batches that ended before the cutoff: record, job set, cursor, deadline index, provider-id entry;
- alert dead letters past the same age and cap (their records expire by themselves).

Each trim is one Lua call over at most ``retention.trim_chunk`` entries, guarded by what it reads,
so a trim running beside intake, ingestion or another trim changes nothing it should not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import structlog
from redis.asyncio import Redis

from config.settings import Settings
from scheduler.ledger import ids, keys, scripts
from scheduler.ledger.jobs import STATES
from scheduler.tick import Tick

log = structlog.get_logger(__name__)

# Lua calls one index may take in one pass; the rest waits for the next pass, so a large backlog
# (the first trim after an upgrade) never holds a scheduler tick for long.
MAX_CALLS_PER_INDEX = 50


@dataclass
class TrimReport:
    """What one trim pass removed: index entries of gone records, and records deleted, by family."""

    index_entries: int = 0
    jobs: int = 0
    deliveries: int = 0
    dead_letters: int = 0
    batches: int = 0
    alert_dead_letters: int = 0
    unfinished: list[str] = field(default_factory=list)  # indexes left for the next pass

    def counts(self) -> dict[str, int]:
        """What was removed, by family (``unfinished`` aside)."""
        return {name: value for name, value in asdict(self).items() if name != "unfinished"}

    def total(self) -> int:
        return sum(self.counts().values())


class Retention:
    """Trims what retention allows. Construct once per process; it holds only script handles."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self._jobs = scripts.load(redis, "retire_jobs")
        self._deliveries = scripts.load(redis, "retire_deliveries")
        self._dead = scripts.load(redis, "retire_dead")
        self._batches = scripts.load(redis, "retire_batches")
        self._tenant = scripts.load(redis, "retire_tenant")

    async def trim(self, now_ms: int) -> TrimReport:
        """Trim everything retention allows at ``now_ms`` (epoch ms); returns what it removed."""
        r = self.settings.retention
        cutoff_ms = now_ms - r.job_ttl_s * 1000
        report = TrimReport()
        indexed = {m.decode() for m in await self.redis.smembers(keys.TENANTS_INDEXED)}  # type: ignore[misc]
        for tenant in sorted(indexed | set(self.settings.tenants)):
            await self._trim_tenant(tenant, cutoff_ms, report)
        await self._trim_dead(now_ms - r.dead_letter_ttl_s * 1000, report)
        await self._trim_batches(cutoff_ms, report)
        await self._trim_alert_dead(now_ms - r.dead_letter_ttl_s * 1000, report)
        if report.total():
            log.info("retention.trimmed", **report.counts(), unfinished=len(report.unfinished))
        return report

    async def _trim_tenant(self, tenant: str, cutoff_ms: int, report: TrimReport) -> None:
        features_key = keys.tenant_features(tenant)
        features = sorted(m.decode() for m in await self.redis.smembers(features_key))  # type: ignore[misc]
        indexes = [(keys.tenant_jobs(tenant), "")]
        indexes += [(keys.tenant_status(tenant, state), "") for state in STATES]
        indexes += [(index, features_key) for index in features]
        for index, owner in indexes:
            await self._trim_job_index(index, owner, cutoff_ms, report)
        await self._trim_deliveries(tenant, cutoff_ms, report)
        tenant_keys = [keys.tenant_jobs(tenant), keys.tenant_deliveries(tenant), features_key]
        tenant_keys += [keys.tenant_status(tenant, state) for state in STATES]
        await self._tenant(keys=[keys.TENANTS_INDEXED, *tenant_keys], args=[tenant])

    async def _trim_job_index(self, index: str, owner: str, cutoff_ms: int, report: TrimReport) -> None:
        # Ids begin with their creation time, so every id made before the cutoff sorts below this.
        upper = "(" + ids.floor_id("job", cutoff_ms)
        lower = "-"
        chunk = self.settings.retention.trim_chunk
        for _ in range(MAX_CALLS_PER_INDEX):
            examined, removed, deleted, last = await self._jobs(
                keys=[index, owner], args=[lower, upper, cutoff_ms, chunk]
            )
            report.index_entries += int(removed)
            report.jobs += int(deleted)
            if int(examined) < chunk:
                return
            lower = "(" + last.decode()
        report.unfinished.append(index)

    async def _trim_deliveries(self, tenant: str, cutoff_ms: int, report: TrimReport) -> None:
        call_keys = [keys.tenant_deliveries(tenant), keys.WEBHOOKS_DUE, keys.WEBHOOKS_DEAD]
        chunk = self.settings.retention.trim_chunk
        kept = 0
        for _ in range(MAX_CALLS_PER_INDEX):
            examined, removed, deleted, still = await self._deliveries(
                keys=call_keys, args=[cutoff_ms, kept, chunk]
            )
            report.index_entries += int(removed)
            report.deliveries += int(deleted)
            kept += int(still)
            if int(examined) < chunk:
                return
        report.unfinished.append(call_keys[0])

    async def _trim_dead(self, cutoff_ms: int, report: TrimReport) -> None:
        r = self.settings.retention
        for _ in range(MAX_CALLS_PER_INDEX):
            deleted = int(
                await self._dead(keys=[keys.WEBHOOKS_DEAD], args=[cutoff_ms, r.dead_letter_max, r.trim_chunk])
            )
            report.dead_letters += deleted
            if deleted < r.trim_chunk:
                return
        report.unfinished.append(keys.WEBHOOKS_DEAD)

    async def _trim_batches(self, cutoff_ms: int, report: TrimReport) -> None:
        chunk = self.settings.retention.trim_chunk
        for _ in range(MAX_CALLS_PER_INDEX):
            before = await self.redis.zcount(keys.BATCHES_ENDED, "-inf", f"({cutoff_ms}")
            if before == 0:
                return
            report.batches += int(
                await self._batches(keys=[keys.BATCHES_ENDED, keys.BATCHES_FAILED], args=[cutoff_ms, chunk])
            )
            if before <= chunk:
                return
        report.unfinished.append(keys.BATCHES_ENDED)

    async def _trim_alert_dead(self, cutoff_ms: int, report: TrimReport) -> None:
        # Alert notification records carry their own TTL (keys.ALERT_DEAD_TTL_S); only the index is ours.
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(keys.ALERTS_DEAD, "-inf", f"({cutoff_ms}")
            pipe.zremrangebyrank(keys.ALERTS_DEAD, 0, -self.settings.retention.dead_letter_max - 1)
            aged, capped = await pipe.execute()
        report.alert_dead_letters += int(aged) + int(capped)


class RetentionStep:
    """The scheduler's ``retention`` tick step: a trim at the first tick, then every ``interval_s``."""

    def __init__(self, retention: Retention, interval_s: float) -> None:
        self.retention = retention
        self.interval_s = interval_s
        self.last: float | None = None

    async def __call__(self, tick: Tick) -> None:
        if self.last is not None and tick.now - self.last < self.interval_s:
            return
        self.last = tick.now
        report = await self.retention.trim(tick.now_ms)
        tick.report.steps["retention"] = report.total()
