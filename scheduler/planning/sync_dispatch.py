"""The sync lane's dispatch: the tick step that hands jobs in ``keys.SYNC_QUEUE`` to ``run_sync`` tasks.

A job is dispatched under a lease (``keys.SYNC_LEASES``, ``settings.scheduler.sync_lease_s``) and a
dispatch number (``keys.SYNC_DISPATCHES``), both set in one Lua step, so a job is never handed out
twice at once: the next tick skips it while its lease runs, and a dispatch whose task died comes
back by itself when the lease ends, under a new number. The arq id ``sync:{job_id}:{n}`` is
deterministic, so a tick that runs twice enqueues nothing twice, and the claim is fenced by the
leader's token, so a deposed leader hands nothing out; a task that finds its number is no
longer current stops without calling the provider. ``run_sync`` drops the lease when it finishes,
and extends it while its call runs (a heartbeat), so a long call is not handed out twice. Lease
ends are Redis server time: the workers stamp them with it, and the scheduler's loop ticks by it.
"""

from __future__ import annotations

import structlog
from arq.connections import ArqRedis
from redis.asyncio import Redis

from config.settings import SchedulerSettings
from scheduler.errors import Fenced
from scheduler.ledger import keys, scripts, tasks
from scheduler.tick import Tick

log = structlog.get_logger(__name__)


def sync_job_id(job_id: str, dispatch: int) -> str:
    """The arq id of a job's ``dispatch``-th run_sync."""
    return f"sync:{job_id}:{dispatch}"


class SyncDispatch:
    """The ``sync`` tick step: enqueue run_sync for sync jobs that have no live dispatch, earliest
    deadline first."""

    def __init__(self, conf: SchedulerSettings, redis: Redis, arq: ArqRedis) -> None:
        self.conf = conf
        self.arq = arq
        self._claim = scripts.load(redis, "sync_claim")

    async def __call__(self, tick: Tick) -> None:
        lease_end = tick.now_ms + int(self.conf.sync_lease_s * 1000)
        flat = await self._claim(
            keys=[keys.SYNC_QUEUE, keys.SYNC_LEASES, keys.SYNC_DISPATCHES, keys.LEADER_FENCE],
            args=[tick.now_ms, lease_end, self.conf.sync_dispatch_limit, tick.token],
        )
        if flat == b"fenced":
            raise Fenced(tick.token)
        enqueued = 0
        for i in range(0, len(flat), 2):
            job_id, dispatch = flat[i].decode(), int(flat[i + 1])
            job = sync_job_id(job_id, dispatch)
            if await tasks.enqueue(self.arq, tasks.RUN_SYNC, job_id, dispatch, job_id=job):
                enqueued += 1
        if enqueued:
            log.info("sync.dispatched", jobs=enqueued)
        tick.report.steps["sync"] = enqueued
