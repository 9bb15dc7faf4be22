"""Send slots for webhook delivery: how many sends may be in flight at once, overall and per key.

A tenant chooses its receiver, so a slow one must hold only its own slots: :class:`Limits` keeps
one counter for all sends, one per tenant and one per (tenant, URL). Entries per key live only
while someone holds or awaits them, so a process that has seen a million URLs keeps none of them.
All :class:`~workers.webhooks.Deliverer` runs on one client (one per process) share one
:class:`Limits`, so concurrent delivery tasks do not multiply the limits.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass

from config.settings import WebhookSettings
from workers.webhook_http import WebhookClient


class Slots:
    """At most ``limit`` holders per key; a key's entry lives only while someone holds or awaits it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._entries: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def hold(self, key: str) -> _Hold:
        """``async with slots.hold(key)``: one of ``key``'s slots for the block (a plain class, not an
        ``asynccontextmanager``: three of these wrap every webhook send)."""
        return _Hold(self, key)


class _Hold:
    """One hold on a key's slots (see :meth:`Slots.hold`)."""

    __slots__ = ("_semaphore", "_users", "key", "slots")

    def __init__(self, slots: Slots, key: str) -> None:
        self.slots = slots
        self.key = key

    async def __aenter__(self) -> None:
        entries = self.slots._entries
        entry = entries.get(self.key)
        if entry is None:
            entry = entries[self.key] = (asyncio.Semaphore(self.slots.limit), [0])
        self._semaphore, self._users = entry
        self._users[0] += 1
        try:
            await self._semaphore.acquire()
        except BaseException:
            self._leave()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._semaphore.release()
        self._leave()

    def _leave(self) -> None:
        self._users[0] -= 1
        if not self._users[0]:
            del self.slots._entries[self.key]


@dataclass(slots=True)
class Limits:
    """The process's send slots: all sends, per tenant and per (tenant, URL)."""

    total: Slots
    tenant: Slots
    url: Slots

    @classmethod
    def of(cls, hooks: WebhookSettings) -> Limits:
        return cls(
            Slots(hooks.concurrency), Slots(hooks.per_tenant_concurrency), Slots(hooks.per_url_concurrency)
        )


# One set of limits per webhook client, i.e. per process: concurrent delivery tasks share them.
_LIMITS: weakref.WeakKeyDictionary[WebhookClient, Limits] = weakref.WeakKeyDictionary()


def limits_for(client: WebhookClient, hooks: WebhookSettings) -> Limits:
    """The send slots shared by every :class:`Deliverer` on ``client``."""
    limits = _LIMITS.get(client)
    if limits is None:
        limits = _LIMITS[client] = Limits.of(hooks)
    return limits
