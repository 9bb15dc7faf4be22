"""The submission lease: one submitter per planned batch, kept alive by a heartbeat while it works.

A submission (spool, upload with retries, create) can outlast ``scheduler.planned_timeout_s`` by
far during a provider storm. The submitting task therefore holds a lease on its batch
(``lease_holder``/``lease_until_ms`` on the batch record, changed only by ``batch_lease.lua``),
renewed every third of ``scheduler.submit_lease_s`` while it works and extended over an arq retry's
deferral. Reconciliation takes a planned batch only by acquiring the same lease, which it gets
only once the holder's lease has lapsed and the holder's create call (``create_started_ms``,
stamped under the lease right before the call) began longer ago than ``scheduler.create_timeout_s``.
The submitter stamps its lease with Redis's clock (scheduler/ledger/clock.py), which every host agrees on.
A holder that lost its lease stops before creating: one create per batch, ever.
"""

from __future__ import annotations

import contextlib

import structlog

from config.settings import Settings
from scheduler.ledger.clock import Clock, ServerClock
from scheduler.ledger.heartbeat import heartbeat
from scheduler.planning.batches import Batches
from workers.errors import LeaseLost

log = structlog.get_logger(__name__)


class SubmitLease:
    """The lease of one batch, held by ``holder`` (the submitting arq job's id)."""

    def __init__(
        self, batches: Batches, settings: Settings, batch_id: str, holder: str, clock: Clock | None = None
    ) -> None:
        self.batches = batches
        self.clock = clock or ServerClock(batches.redis)  # the worker's ctx["clock"]
        self.batch_id = batch_id
        self.holder = holder
        self.lease_ms = int(settings.scheduler.submit_lease_s * 1000)
        self.create_timeout_ms = int(settings.scheduler.create_timeout_s * 1000)

    async def acquire(self, now_ms: int) -> str:
        """Take the lease at ``now_ms``; ``ok`` or why not (``held:``, ``creating:``, ``skip:``, ``missing``)."""
        return await self.batches.lease(
            self.batch_id,
            "acquire",
            self.holder,
            now_ms=now_ms,
            until_ms=now_ms + self.lease_ms,
            create_cutoff_ms=now_ms - self.create_timeout_ms,
        )

    async def renew(self, extra_s: float = 0.0) -> str:
        """Extend the lease from now (by ``extra_s`` more, e.g. over an arq retry's deferral)."""
        now = await self.clock.now_ms()
        until = now + self.lease_ms + int(extra_s * 1000)
        return await self.batches.lease(self.batch_id, "renew", self.holder, now_ms=now, until_ms=until)

    async def before_create(self) -> None:
        """Stamp ``create_started_ms`` under the lease, or raise LeaseLost: the create must not happen."""
        now = await self.clock.now_ms()
        outcome = await self.batches.lease(
            self.batch_id, "create", self.holder, now_ms=now, until_ms=now + self.lease_ms
        )
        if outcome != "ok":
            raise LeaseLost(self.batch_id, outcome)

    async def release(self) -> None:
        await self.batches.lease(self.batch_id, "release", self.holder, now_ms=await self.clock.now_ms())

    def heartbeat(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Renew the lease every third of its length while the body runs."""

        async def beat() -> bool:
            outcome = await self.renew()
            if outcome != "ok":  # lost: before_create stops the create
                log.warning("batch.lease_lost", batch_id=self.batch_id, outcome=outcome)
            return outcome == "ok"

        return heartbeat(beat, self.lease_ms / 3000, name="submit")
