"""The webhook dispatch: the tick step that starts a ``deliver_webhooks`` task when deliveries are due.

The deliveries themselves wait in ``keys.WEBHOOKS_DUE`` (scored by next attempt time); one task
drains thousands of them concurrently (workers/webhooks.py), so the scheduler only needs to make
sure a task runs while anything is due. The arq id is ``webhooks:{second}``: at most one new task
per second however often the tick runs, and several tasks running at once claim disjoint slices.
"""

from __future__ import annotations

import hashlib

from arq.connections import ArqRedis
from redis.asyncio import Redis

from scheduler.ledger import keys, tasks
from scheduler.tick import Tick


def url_hash(tenant: str, url: str) -> str:
    """The key part under which a tenant's disabled receiver URL is remembered (``keys.disabled_url``).

    Per tenant: one tenant's receiver answering 410, or one tenant's replay lifting that, says
    nothing about another tenant that happens to use the same URL.
    """
    return hashlib.sha256(f"{tenant}\n{url}".encode()).hexdigest()[:32]


def webhooks_job_id(now_ms: int) -> str:
    """The arq id of the delivery task started in the second of ``now_ms``."""
    return f"webhooks:{now_ms // 1000}"


class WebhookDispatch:
    """The ``webhooks`` tick step: enqueue deliver_webhooks when at least one delivery is due."""

    def __init__(self, redis: Redis, arq: ArqRedis) -> None:
        self.redis = redis
        self.arq = arq

    async def __call__(self, tick: Tick) -> None:
        due = await self.redis.zrangebyscore(keys.WEBHOOKS_DUE, "-inf", tick.now_ms, start=0, num=1)
        started = False
        if due:
            job_id = webhooks_job_id(tick.now_ms)
            started = await tasks.enqueue(self.arq, tasks.DELIVER_WEBHOOKS, job_id=job_id)
        tick.report.steps["webhooks"] = int(started)
