"""The outbox: claim → lease → send → settle, written once for every kind of outbound item.

A kind (completion webhooks in :mod:`workers.webhooks`, alert notifications in
:mod:`workers.alerts`) keeps one hash per item and a sorted set of item ids scored by when each is
next due, on the worker's injected clock (``ctx["clock"]``), so a test on a virtual clock decides
what is due by its steps alone. :class:`Outbox` claims due items with a lease
(scheduler/ledger/lua/lib/outbox_claim.lua: the score moves to the lease's end on the injected
clock, the Redis server's time in production, so a dead worker's claims come back by themselves
and a worker whose own clock runs ahead cannot take claims that are still live), sends them
concurrently, and settles each in one guarded Lua step (scheduler/ledger/lua/lib/outbox_settle.lua,
applied only while the claim is still ours; run first in the step of the next claim, or alone when
none follows): done, retried at the next time of the kind's schedule (``Retry-After`` honoured up
to the schedule's longest step), dead-lettered after the last attempt or when refused for good, or
handed back unsent when its send could not end within the lease.

A subclass plugs in what differs: its :class:`Terms` (keys, lease, deadline, schedule), how its
items are loaded (:meth:`Outbox._load`, or read in the claim's own step by overriding
:meth:`Outbox._claim_items`), the send slots one item takes (:meth:`Outbox._take_slots`,
:meth:`Outbox._give_slots`), how one item is sent (:meth:`Outbox._send`, returning a
:class:`Verdict`) and what it counts. Every send goes through :func:`workers.http.post_capped`
(alerts) or :meth:`workers.webhook_http.WebhookClient.post` (webhooks): one deadline over the whole
call and a capped read of the answer, so no receiver costs a worker more than one send's worth.
"""

from __future__ import annotations

import abc
import asyncio
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import orjson
import structlog
from redis.asyncio import Redis

from scheduler import policy
from scheduler.ledger import keys, scripts
from scheduler.ledger.clock import Clock, ServerClock

log = structlog.get_logger(__name__)

# Claim more once fewer than this share of a slice is still in flight, so slow receivers never
# hold the fast ones back.
REFILL_SHARE = 0.5
# Due entries one claim looks at, per item it may claim (groups without room are skipped).
SCAN_PER_CLAIM = 4
# Share of the lease kept free after the last send it covers (at most half what the lease has
# beyond one send deadline).
LEASE_MARGIN = 0.05

Settle = Literal["done", "retry", "dead", "released"]

T = TypeVar("T")


@dataclass(slots=True)
class Report:
    """What one run did: counts per action; each kind adds its own (``sent``, ``delivered``, ...)."""

    claimed: int = 0
    retry: int = 0
    dead: int = 0
    released: int = 0  # handed back unsent: the send could not have ended within the lease


R = TypeVar("R", bound=Report)


@dataclass(frozen=True, slots=True)
class Terms:
    """One kind's outbox: where its items live and how they are claimed, sent and retried."""

    name: str  # log events (``<name>.retry``, ``<name>.dead``)
    due_key: str  # sorted set: item id -> next attempt (or lease end) in epoch ms
    dead_key: str  # sorted set: dead-lettered item id -> when it died
    record_prefix: str  # an item's hash is record_prefix + id
    lease_s: float
    timeout_s: float  # one send's deadline
    claim_batch: int
    concurrency: int  # sends in flight at once per worker
    group_hold: int  # most items of one group (tenant) a worker holds at once
    retry_schedule_s: Sequence[float]  # delays after each failed attempt, then dead
    jitter: float = 0.0  # random share (±) of each delay
    delete_done: bool = False  # a sent item's record is deleted (else kept with its status)
    dead_ttl_s: int = 0  # seconds a dead item's record is kept (0: until retention retires it)


@dataclass(slots=True)
class Item(Generic[T]):
    """One claimed item: its id, the attempts it has had, its fairness group and the kind's data."""

    id: str
    attempts: int
    group: str
    data: T


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one send came to, in the kind's words; the outbox turns ``failed`` into retry or dead."""

    action: str  # the report's name for it (``delivered``, ``sent``, ``disabled``, ``dead``...)
    settle: Literal["done", "failed", "dead"]
    attempted: bool = True
    status_code: int | None = None
    error: str | None = None
    retry_after: float | None = None  # seconds the receiver asked for (failed only)
    set_key: str | None = None  # a key set to now when the item settles (a URL's 410 mark)

    @classmethod
    def failed(cls, error: str, status_code: int | None = None, retry_after: float | None = None) -> Verdict:
        """A failure worth another attempt, if the schedule has one left."""
        return cls("retry", "failed", True, status_code, error, retry_after)


@dataclass(slots=True)
class Outcome:
    """What one claimed item came to, as the settle script takes it."""

    id: str
    token: str
    action: str
    settle: Settle
    status: str
    attempted: bool
    next_ms: int | None = None  # a retry's due time; when None, the settle's now + ``delay_ms``
    delay_ms: int | None = None
    status_code: int | None = None
    error: str | None = None
    set_key: str | None = None
    metric: str | None = None

    def row(self) -> tuple[Any, ...]:
        """What lib/outbox_settle.lua reads of it, in its order (an array decodes cheaper than an object)."""
        return (
            self.id,
            self.token,
            self.settle,
            self.status,
            self.attempted,
            self.next_ms,
            self.status_code,
            self.error,
            self.set_key,
            self.metric,
            self.delay_ms,
        )


def reading(now_ms: int) -> Callable[[], Awaitable[int]]:
    """A "now" that stays at ``now_ms``: one reading for a whole drain, as the scheduler stamps a tick."""

    async def now() -> int:
        return now_ms

    return now


async def reading_none() -> None:
    """No reading: the settle script reads the server's time itself."""
    return None


def lease_slack(terms: Terms) -> float:
    """Seconds of a lease left free after the last send it covers (clock rates differ a little)."""
    return min(terms.lease_s * LEASE_MARGIN, (terms.lease_s - terms.timeout_s) / 2)


def capacity(terms: Terms) -> int:
    """Most items a worker holds at once: ``claim_batch``, but no more than could all be sent
    within one lease if every receiver took the whole send deadline, so claims outlive their sends."""
    rounds = int((terms.lease_s - lease_slack(terms)) // terms.timeout_s)
    return max(1, min(terms.claim_batch, terms.concurrency * rounds))


def retry_delay(terms: Terms, attempts: int, rng: random.Random, retry_after: float | None) -> float | None:
    """Seconds until attempt ``attempts + 1``, or None when the schedule is spent (dead-letter).

    The schedule's step with the kind's jitter (:func:`scheduler.policy.scheduled_delay`); a longer
    ``Retry-After`` wins, up to the schedule's longest step (a receiver cannot park an item for a year).
    """
    schedule = terms.retry_schedule_s
    delay = policy.scheduled_delay(schedule, attempts, terms.jitter, rng)
    if delay is None:
        return None
    if retry_after is not None:
        delay = max(delay, min(retry_after, max(schedule)))
    return delay


class Outbox(abc.ABC, Generic[T, R]):
    """Claims, sends and settles one kind's due items; one per task run, on the process's client."""

    def __init__(
        self,
        redis: Redis,
        terms: Terms,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.terms = terms
        self.lease_clock = clock or ServerClock(redis)  # leases run on it: the worker's ctx["clock"]
        # Production's lease clock is the TIME of the server the scripts run on: they read it
        # themselves, a round trip less per claim and settle.
        lc = self.lease_clock
        self._server_time = (
            isinstance(lc, ServerClock) and type(lc).now_ms is ServerClock.now_ms and lc.redis is redis
        )
        self.rng = rng or random.Random()
        self.monotonic = monotonic
        self._keys = [terms.due_key, terms.dead_key, keys.METRICS_GLOBAL]  # the claim's and settle's
        self._claim = scripts.load(redis, "outbox_claim")
        self._settle = scripts.load(redis, "outbox_settle")

    @abc.abstractmethod
    def _new_report(self) -> R:
        """An empty report of this kind."""

    async def _load(self, ids: list[str]) -> list[Item[T]]:
        """The claimed items, in any order, with what their sends need (a kind that reads them in
        its claim overrides :meth:`_claim_items` instead)."""
        raise NotImplementedError

    async def _claim_items(self, args: list[Any]) -> tuple[list[Item[T]], bool]:
        """Claim with outbox_claim.lua's ``args`` (settling first what they carry) and load the
        claimed items; whether some were left."""
        raw_ids, left = await self._claim(keys=self._keys, args=args)
        return await self._load([i.decode() for i in raw_ids]), bool(left)

    @abc.abstractmethod
    async def _send(self, item: Item[T]) -> Verdict:
        """Send one item; transport failures come back as a failed verdict, never raised."""

    def _metric(self, item: Item[T], action: str) -> str | None:
        """The field of the global metrics hash a settled item counts in (None: not counted)."""
        return None

    def _log_fields(self, item: Item[T]) -> dict[str, Any]:
        """Fields that name an item in log events."""
        return {"id": item.id}

    def _take_slots(self, item: Item[T]) -> Awaitable[None] | None:
        """Take the send slots ``item`` takes: None when taken at once, else what to await for them
        (an awaitable that, cancelled, holds none). None by default: ``capacity`` bounds the sends."""
        return None

    def _give_slots(self, item: Item[T]) -> None:
        """Give back what :meth:`_take_slots` took."""

    async def drain(self, now_ms: Callable[[], Awaitable[int]], budget_s: float) -> R:
        """Send everything due, claiming as slots free up, until nothing is due or ``budget_s`` passed.

        ``now_ms`` is the domain's "now" (the worker's injected clock): it decides what is due and
        stamps settles and retries, read once per claim and once per settle. The budget is real
        elapsed time on ``monotonic``: it exists to end the drain before the arq task's timeout,
        which runs on the host's clock whatever the domain's clock says. What ended is settled
        first in the step of the claim that follows it, or on its own when no claim follows.
        """
        report = self._new_report()
        held_max = capacity(self.terms)
        started = self.monotonic()
        in_flight: dict[asyncio.Task[Outcome], str] = {}  # each send and its group
        # Sends that ended, in the order they did: one callback per task, where asyncio.wait over
        # every task in flight would add and remove a callback on each of them at every wake.
        ended: list[asyncio.Task[Outcome]] = []
        wake = asyncio.Event()

        def on_end(task: asyncio.Task[Outcome]) -> None:
            ended.append(task)
            wake.set()

        exhausted = False  # nothing more is due, or the budget is spent
        # What is due belongs to groups without room: claim again once a share of a full group's
        # hold of sends ended, at once when a send of any other group ends (its group may have more
        # due: a slow receiver filling its own group's hold must not hold the others back), or when
        # none is left in flight. A claim behind a group's backlog looks at a whole group's room of
        # entries it refuses, so claiming after every end of that group's sends cost more Redis time
        # in refusals than in what was claimed.
        blocked = False
        ended_since = 0  # sends of the full groups ended since the claim that found them blocked
        full: set[str] = set()  # groups holding their whole hold at that claim
        unblock_after = max(1, int(self.terms.group_hold * REFILL_SHARE))
        # When "now" is the lease clock's own reading, one reading serves the claim and its lease
        # (and when that clock is the server's, the claim and settle scripts read it themselves).
        shared = now_ms == self.lease_clock.now_ms
        settle_now = reading_none if shared and self._server_time else now_ms
        outcomes: list[Outcome] = []  # of sends that ended, not settled yet
        try:
            while True:
                room = held_max - len(in_flight)
                if not exhausted and not blocked and room >= held_max * REFILL_SHARE:
                    if self.monotonic() - started < budget_s:
                        settle_at = await settle_now() if outcomes else None
                        claimed, left = await self._claim_and_start(
                            None if shared else await now_ms(), room, in_flight, on_end, outcomes, settle_at
                        )
                        self._count(outcomes, report)
                        outcomes = []
                        report.claimed += claimed
                        exhausted = claimed < room and not left
                        blocked = claimed < room and left
                        ended_since = 0
                        full = self._full_groups(in_flight) if blocked else set()
                    else:
                        exhausted = True
                if outcomes:
                    await self._apply(outcomes, await settle_now(), report)
                    outcomes = []
                if not in_flight:
                    if exhausted or blocked:  # blocked with nothing held: only others' claims are left
                        return report
                    continue
                if not ended:
                    wake.clear()
                    await wake.wait()
                done = ended[:]
                ended.clear()
                for task in done:
                    if in_flight.pop(task) in full:
                        ended_since += 1
                    else:
                        blocked = False
                if ended_since >= unblock_after or not in_flight:
                    blocked = False
                outcomes = [t.result() for t in done]
        finally:
            for task in in_flight:
                task.cancel()

    def _full_groups(self, in_flight: dict[asyncio.Task[Outcome], str]) -> set[str]:
        """The groups holding their whole hold of sends in flight."""
        held: dict[str, int] = {}
        for group in in_flight.values():
            held[group] = held.get(group, 0) + 1
        return {group for group, n in held.items() if n >= self.terms.group_hold}

    async def _claim_and_start(
        self,
        now_ms: int | None,
        room: int,
        in_flight: dict[asyncio.Task[Outcome], str],
        on_end: Callable[[asyncio.Task[Outcome]], object] | None = None,
        settle: Sequence[Outcome] = (),
        settle_ms: int | None = None,
    ) -> tuple[int, bool]:
        """Claim up to ``room`` items due at ``now_ms`` (None: the lease clock's reading) and start
        their sends (``on_end`` called as each ends); return how many, and whether some were left.
        ``settle`` is settled first in the same step, at ``settle_ms`` (None: the server's time),
        as :meth:`_apply` would.

        When the lease clock is the server's (``_server_time``), the script reads it itself."""
        terms = self.terms
        held: dict[str, int] = {}
        for group in in_flight.values():
            held[group] = held.get(group, 0) + 1
        rooms = {group: max(0, terms.group_hold - n) for group, n in held.items()}
        token = secrets.token_hex(8)
        # Measured before the shared clock is read, so it ends no later than the lease Redis records.
        lease_ends = self.monotonic() + terms.lease_s
        lease_from = "" if self._server_time else await self.lease_clock.now_ms()
        items, left = await self._claim_items(
            [
                lease_from if now_ms is None else now_ms,
                int(terms.lease_s * 1000),
                room,
                token,
                terms.record_prefix,
                terms.group_hold,
                orjson.dumps(rooms),
                room * SCAN_PER_CLAIM,
                lease_from,
                orjson.dumps([o.row() for o in settle]) if settle else "",
                "" if settle_ms is None else settle_ms,
                int(terms.delete_done),
                terms.dead_ttl_s,
            ]
        )
        for item in items:
            task = asyncio.create_task(self._guarded_send(item, token, lease_ends))
            if on_end is not None:
                task.add_done_callback(on_end)
            in_flight[task] = item.group
        return len(items), left

    async def _guarded_send(self, item: Item[T], token: str, lease_ends: float) -> Outcome:
        """Send once the item's slots are free, if the send can end within the lease; else hand it back."""
        wait = self._take_slots(item)
        if wait is not None:
            await wait
        try:
            latest_start = lease_ends - self.terms.timeout_s - lease_slack(self.terms)
            if self.monotonic() > latest_start:
                return Outcome(item.id, token, "released", "released", "", False)
            try:
                verdict = await self._send(item)
            except Exception as exc:  # one broken item must not stop the loop; it is retried
                log.exception(f"{self.terms.name}.crashed", **self._log_fields(item))
                verdict = Verdict.failed(f"internal error: {exc!r}")
            return self._outcome(item, token, verdict)
        finally:
            self._give_slots(item)

    def _outcome(self, item: Item[T], token: str, verdict: Verdict) -> Outcome:
        """The settle step a verdict stands for: a failure is retried on the schedule or dead-lettered."""
        action, status = verdict.action, verdict.action
        settle: Settle
        delay_ms = None
        if verdict.settle == "failed":
            attempts = item.attempts + 1
            delay = retry_delay(self.terms, attempts, self.rng, verdict.retry_after)
            fields = self._log_fields(item) | {"attempts": attempts, "error": verdict.error}
            if delay is None:
                action, settle, status = "dead", "dead", "dead"
                log.warning(f"{self.terms.name}.dead", **fields)
            else:
                action, settle, status = "retry", "retry", "failing"
                delay_ms = round(delay * 1000)  # stamped from the settle's now (see _apply)
                log.info(f"{self.terms.name}.retry", delay=delay, **fields)
        else:
            settle = verdict.settle
        return Outcome(
            item.id,
            token,
            action,
            settle,
            status,
            verdict.attempted,
            delay_ms=delay_ms,
            status_code=verdict.status_code,
            error=verdict.error,
            set_key=verdict.set_key,
            metric=self._metric(item, action),
        )

    async def _apply(self, outcomes: list[Outcome], now_ms: int | None, report: R) -> None:
        """Settle ``outcomes`` in one guarded step at ``now_ms`` (None: the Redis server's time, read
        by the step itself) and count them; a retry is due its delay after that now (when its send
        ended, not when it was claimed)."""
        terms = self.terms
        await self._settle(
            keys=self._keys,
            args=[
                orjson.dumps([o.row() for o in outcomes]),
                "" if now_ms is None else now_ms,
                terms.record_prefix,
                int(terms.delete_done),
                terms.dead_ttl_s,
            ],
        )
        self._count(outcomes, report)

    @staticmethod
    def _count(outcomes: Sequence[Outcome], report: R) -> None:
        """Count settled ``outcomes`` in ``report``, by action."""
        for o in outcomes:
            setattr(report, o.action, getattr(report, o.action) + 1)
