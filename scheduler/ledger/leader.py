"""The scheduler's leader lease with a fencing token: any number of replicas, exactly one acting.

The lease is a Redis string with a TTL (``SET NX PX``), renewed each tick only while we still hold
it. Each acquisition takes a new fencing token (``INCR``); every write of the leader's tick that
matters checks the token is still current in the same atomic step, so a leader that was paused
past its lease and wakes up to a late tick is refused (:class:`scheduler.errors.Fenced`) instead
of acting beside its successor: batch reservation in ``reserve_batch.lua``, and every other leader
write (incident state, the alert outbox, lane snapshots) through :func:`fenced_write`.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Sequence

import orjson
import structlog
from redis.asyncio import Redis

from scheduler.errors import Fenced
from scheduler.ledger import keys, scripts

log = structlog.get_logger(__name__)

# One Redis command of a fenced write: its name, then its arguments.
Command = Sequence[str | bytes | int | float]


def holder_id() -> str:
    """A name for this replica: host plus a random suffix, so two on one host differ."""
    return f"{socket.gethostname()}:{secrets.token_hex(4)}"


class Leader:
    """One replica's view of the lease."""

    def __init__(self, redis: Redis, *, holder: str, ttl_s: float) -> None:
        self.redis = redis
        self.holder = holder
        self.ttl_ms = max(int(ttl_s * 1000), 1)
        self.token: int | None = None
        self._script = scripts.load(redis, "leader")
        self._release = scripts.load(redis, "leader_release")

    @property
    def is_leader(self) -> bool:
        return self.token is not None

    async def ensure(self) -> int | None:
        """Acquire or renew the lease; the fencing token while we lead, None otherwise."""
        held = "" if self.token is None else str(self.token)
        status, token = await self._script(
            keys=[keys.LEADER_LEASE, keys.LEADER_FENCE], args=[self.holder, self.ttl_ms, held]
        )
        if status == b"lost":
            if self.token is not None:
                log.warning("scheduler.lease_lost", holder=self.holder, token=self.token)
            self.token = None
            return None
        new = int(token)
        if status == b"acquired":
            log.info("scheduler.lease_acquired", holder=self.holder, token=new)
        self.token = new
        return new

    async def release(self) -> None:
        """Give the lease up if we hold it (a clean shutdown hands over without waiting for the TTL)."""
        if self.token is not None:
            await self._release(keys=[keys.LEADER_LEASE], args=[self.holder])
            log.info("scheduler.lease_released", holder=self.holder, token=self.token)
        self.token = None


async def fenced_write(redis: Redis, token: int, commands: Sequence[Command]) -> None:
    """Run ``commands`` in one atomic step if ``token`` is still the current fencing token.

    Raises:
        Fenced: another replica took the lease since ``token`` was handed out; nothing was written.
    """
    if not commands:
        return
    script = scripts.load(redis, "fenced")
    encoded = orjson.dumps([[_text(arg) for arg in command] for command in commands])
    if await script(keys=[keys.LEADER_FENCE], args=[token, encoded]) == b"fenced":
        raise Fenced(token)


def _text(arg: str | bytes | int | float) -> str:
    return arg.decode() if isinstance(arg, bytes) else str(arg)
