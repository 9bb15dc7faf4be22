"""Send slots for webhook delivery: how many sends may be in flight at once, overall and per key.

A tenant chooses its receiver, so a slow one must hold only its own slots: :class:`Limits` keeps
one counter for all sends, one per tenant and one per (tenant, URL). Entries per key live only
while someone holds or awaits them, so a process that has seen a million URLs keeps none of them.
All :class:`~workers.webhooks.Deliverer` runs on one client (one per process) share one
:class:`Limits`, so concurrent delivery tasks do not multiply the limits.
"""

from __future__ import annotations

import asyncio
import collections
import weakref
from collections.abc import Awaitable
from dataclasses import dataclass

from config.settings import WebhookSettings
from workers.webhook_http import WebhookClient


class _Entry:
    """One key's slots: how many are held, and who waits for one (first come, first served)."""

    __slots__ = ("held", "waiters")

    def __init__(self) -> None:
        self.held = 0
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()


class Slots:
    """At most ``limit`` holders per key; a key's entry lives only while someone holds or awaits it.

    Taking a free slot is a plain call (:meth:`try_take`), no coroutine: three of these are taken
    for every webhook send, nearly always without a wait.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def try_take(self, key: str) -> bool:
        """Take one of ``key``'s slots if one is free and no one waits for it."""
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        elif entry.held >= self.limit or entry.waiters:
            return False
        entry.held += 1
        return True

    async def take(self, key: str) -> None:
        """One of ``key``'s slots, waiting in line for it when none is free."""
        if self.try_take(key):
            return
        entry = self._entries[key]
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry.waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.give(key)  # handed a slot as it was cancelled: pass it on
            else:
                if waiter in entry.waiters:  # else a give already dropped it
                    entry.waiters.remove(waiter)
                self._forget(key, entry)
            raise

    def give(self, key: str) -> None:
        """Give back one of ``key``'s slots: to the first in line, else free."""
        entry = self._entries[key]
        while entry.waiters:
            waiter = entry.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to it as held
                return
        entry.held -= 1
        self._forget(key, entry)

    def _forget(self, key: str, entry: _Entry) -> None:
        if not entry.held and not entry.waiters and self._entries.get(key) is entry:
            del self._entries[key]

    def hold(self, key: str) -> _Hold:
        """``async with slots.hold(key)``: one of ``key``'s slots for the block."""
        return _Hold(self, key)


class _Hold:
    """One hold on a key's slots (see :meth:`Slots.hold`)."""

    __slots__ = ("key", "slots")

    def __init__(self, slots: Slots, key: str) -> None:
        self.slots = slots
        self.key = key

    async def __aenter__(self) -> None:
        await self.slots.take(self.key)

    async def __aexit__(self, *exc: object) -> None:
        self.slots.give(self.key)


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

    def take(self, url_key: str, tenant: str) -> Awaitable[None] | None:
        """The slots of one send, per (tenant, URL), per tenant, then overall: None when all three
        were free (taken at once), else what to await for the rest (cancelled, it gives back all)."""
        if self.url.try_take(url_key):
            if self.tenant.try_take(tenant):
                if self.total.try_take(""):
                    return None
                return self._wait(url_key, tenant, 2)
            return self._wait(url_key, tenant, 1)
        return self._wait(url_key, tenant, 0)

    async def _wait(self, url_key: str, tenant: str, taken: int) -> None:
        """Take the slots after the first ``taken`` (held already), in order."""
        steps = ((self.url, url_key), (self.tenant, tenant), (self.total, ""))
        try:
            for slots, key in steps[taken:]:
                await slots.take(key)
                taken += 1
        except BaseException:
            for slots, key in steps[:taken]:
                slots.give(key)
            raise

    def give(self, url_key: str, tenant: str) -> None:
        """Give back one send's slots (all three)."""
        self.total.give("")
        self.tenant.give(tenant)
        self.url.give(url_key)


# One set of limits per webhook client, i.e. per process: concurrent delivery tasks share them.
_LIMITS: weakref.WeakKeyDictionary[WebhookClient, Limits] = weakref.WeakKeyDictionary()


def limits_for(client: WebhookClient, hooks: WebhookSettings) -> Limits:
    """The send slots shared by every :class:`Deliverer` on ``client``."""
    limits = _LIMITS.get(client)
    if limits is None:
        limits = _LIMITS[client] = Limits.of(hooks)
    return limits
