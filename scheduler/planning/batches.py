"""Batch records: reserving a lane's jobs into a planned batch, and every later batch state change.

A batch's life: ``planned`` (jobs reserved, nothing sent) → ``submitted`` (the provider's id is
recorded) → ``ended`` (the provider finished; results await ingestion) → ``ingested``; or
``failed`` (refused as a whole) / ``cancelled``. Each change is one guarded Lua step
(``reserve_batch``, ``batch_submitted``, ``batch_duplicate``, ``batch_update``), so a task that runs
twice, or a deposed scheduler leader, changes nothing it should not.

Record fields (hash ``keys.batch(id)``): id, state, lane, provider, model, endpoint, requests,
bytes, planned_ms, attempts (submissions tried), create_started_ms, provider_batch_id,
submitted_ms, submitted_by (created | adopted | duplicate), lease_holder and lease_until_ms (the
submission lease, ``batch_lease``), poll_interval_s, next_poll_ms, running_seen_ms (the last poll that
saw it running), pulled_poll_ms (a poll the SLO tracker brought forward, :mod:`scheduler.slo.flips`), status
(provider's normalised status), raw_status, total, completed, failed, ended_ms, ingested_ms,
duplicate_of (this is a second provider batch of that batch), duplicates, error (JSON).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from scheduler.costs import metrics
from scheduler.errors import Fenced
from scheduler.ledger import keys, samples, scripts
from scheduler.planning import prefixes
from scheduler.planning.lanes import LINE_OVERHEAD_BYTES, Lane

# Prefix grouping's reads (Batches.reserve_grouped): jobs looked at beyond a batch's capacity when
# choosing its members, and the band's first jobs read to see whether the lane has prefixes at all.
GROUP_LOOKAHEAD = 10_000
GROUP_PROBE = 500


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """A batch as stored, decoded."""

    id: str
    state: str
    lane: str
    provider: str
    model: str
    endpoint: str
    requests: int
    nbytes: int  # bytes of the batch input (bodies plus line overhead)
    planned_ms: int
    attempts: int
    provider_batch_id: str | None
    submitted_ms: int | None
    ended_ms: int | None
    poll_interval_s: float | None
    duplicate_of: str | None
    raw: dict[str, str]

    @property
    def owner_id(self) -> str:
        """The batch id its jobs carry: a duplicate's results are applied under the original's id."""
        return self.duplicate_of or self.id

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes]) -> BatchRecord:
        h = {k.decode(): v.decode() for k, v in raw.items()}

        def opt_int(name: str) -> int | None:
            return int(h[name]) if h.get(name) else None

        return cls(
            id=h["id"],
            state=h["state"],
            lane=h.get("lane", ""),
            provider=h.get("provider", ""),
            model=h.get("model", ""),
            endpoint=h.get("endpoint", ""),
            requests=int(h.get("requests") or 0),
            nbytes=int(h.get("bytes") or 0),
            planned_ms=int(h.get("planned_ms") or 0),
            attempts=int(h.get("attempts") or 0),
            provider_batch_id=h.get("provider_batch_id") or None,
            submitted_ms=opt_int("submitted_ms"),
            ended_ms=opt_int("ended_ms"),
            poll_interval_s=float(h["poll_interval_s"]) if h.get("poll_interval_s") else None,
            duplicate_of=h.get("duplicate_of") or None,
            raw=h,
        )


@dataclass(frozen=True, slots=True)
class Update:
    """What a guarded batch change did: ``ok`` (from ``prior``), ``skip`` (it was in ``prior``), ``missing``."""

    status: str
    prior: str
    incremented: int | None = None


def _reserve_keys(lane: str, batch_id: str) -> list[str]:
    """The keys reserve_batch.lua and reserve_jobs.lua share (lua/lib/reserve.lua)."""
    return [
        keys.LEADER_FENCE,
        keys.lane_queue(lane),
        keys.lane_arrivals(lane),
        keys.lane_bytes(lane),
        keys.batch(batch_id),
        keys.batch_jobs(batch_id),
        keys.BATCHES_PLANNED,
    ]


class Batches:
    """Reads and changes batch records. Construct once per process; it holds only script handles."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._reserve = scripts.load(redis, "reserve_batch")
        self._submitted = scripts.load(redis, "batch_submitted")
        self._duplicate = scripts.load(redis, "batch_duplicate")
        self._update = scripts.load(redis, "batch_update")
        self._lease = scripts.load(redis, "batch_lease")
        self._reserve_jobs = scripts.load(redis, "reserve_jobs")

    async def reserve(self, lane: Lane, batch_id: str, *, token: int, now_ms: int, chunk: int) -> int:
        """Move up to one batch's worth of the lane's jobs into planned batch ``batch_id``, in chunks.

        Returns the number of jobs reserved (0 when the lane was empty).

        Raises:
            Fenced: ``token`` is not the current leader's; nothing was moved by this call.
        """
        taken, _ = await self.reserve_band(
            lane, batch_id, token=token, now_ms=now_ms, chunk=chunk, until_ms=2**62
        )
        return taken

    async def reserve_band(
        self, lane: Lane, batch_id: str, *, token: int, now_ms: int, chunk: int, until_ms: int
    ) -> tuple[int, bool]:
        """Like :meth:`reserve`, taking no job due after ``until_ms`` (its deadline band).

        Returns the number of jobs reserved and whether the band (not a cap, not the queue running
        out) closed the batch.

        Raises:
            Fenced: ``token`` is not the current leader's; nothing was moved by this call.
        """
        total = 0
        while True:
            reply = await self._reserve(
                keys=_reserve_keys(lane.name, batch_id),
                args=[
                    token,
                    batch_id,
                    lane.max_batch_requests,
                    lane.max_batch_bytes,
                    chunk,
                    LINE_OVERHEAD_BYTES,
                    now_ms,
                    lane.name,
                    lane.provider,
                    lane.model,
                    lane.endpoint,
                    until_ms,
                ],
            )
            if reply[0] == b"fenced":
                raise Fenced(token)
            taken, full = int(reply[1]), int(reply[3])
            total += taken
            if full or taken < chunk:
                return total, full == 2

    async def reserve_grouped(
        self,
        lane: Lane,
        batch_id: str,
        *,
        token: int,
        now_ms: int,
        chunk: int,
        until_ms: int,
        urgent_until_ms: int,
    ) -> tuple[int, bool]:
        """Like :meth:`reserve_band`, taking jobs that share a prompt prefix together when the band
        holds more than the batch: :func:`prefixes.group_order` picks among the band's first
        ``max_batch_requests`` + :data:`GROUP_LOOKAHEAD` jobs, urgent ones first.

        A band that fits the batch, or whose first :data:`GROUP_PROBE` jobs carry no prefix, is
        reserved in deadline order (:meth:`reserve_band`): its membership would not change, and a lane
        without prefixes pays one short read. With the lane's ``warmup_min_group`` set, a large group
        not warmed lately is first sent alone as a one-request warm-up batch, and its other jobs wait
        (unless under deadline pressure) until that batch has ended (:meth:`_warmups`).

        Raises:
            Fenced: ``token`` is not the current leader's; nothing was moved by this call.
        """
        queue = keys.lane_queue(lane.name)
        band = await self.redis.zcount(queue, "-inf", until_ms)

        def plain() -> Awaitable[tuple[int, bool]]:
            return self.reserve_band(
                lane, batch_id, token=token, now_ms=now_ms, chunk=chunk, until_ms=until_ms
            )

        if band <= lane.max_batch_requests and lane.warmup_min_group is None:
            return await plain()
        rows = await self.redis.zrangebyscore(
            queue, "-inf", until_ms, start=0, num=GROUP_PROBE, withscores=True
        )
        found = await self._prefixes([member for member, _ in rows])
        if not any(found):
            return await plain()
        scan = min(band, lane.max_batch_requests + GROUP_LOOKAHEAD)
        if scan > len(rows):
            more = await self.redis.zrangebyscore(
                queue, "-inf", until_ms, start=len(rows), num=scan - len(rows), withscores=True
            )
            found += await self._prefixes([member for member, _ in more])
            rows += more
        candidates = [(m.decode(), int(score), p.decode()) for (m, score), p in zip(rows, found, strict=True)]
        if lane.warmup_min_group is not None:
            warmup, held = await self._warmups(lane, batch_id, candidates, urgent_until_ms)
            if warmup is not None:
                candidates = [warmup]
            else:
                candidates = [c for c in candidates if c[2] not in held or c[1] <= urgent_until_ms]
        order = prefixes.group_order(candidates, urgent_until_ms=urgent_until_ms)
        total = 0
        for start in range(0, len(order), chunk):
            reply = await self._reserve_jobs(
                keys=_reserve_keys(lane.name, batch_id),
                args=[
                    token,
                    batch_id,
                    lane.max_batch_requests,
                    lane.max_batch_bytes,
                    LINE_OVERHEAD_BYTES,
                    now_ms,
                    lane.name,
                    lane.provider,
                    lane.model,
                    lane.endpoint,
                    *order[start : start + chunk],
                ],
            )
            if reply[0] == b"fenced":
                raise Fenced(token)
            total += int(reply[1])
            if int(reply[3]):
                break
        return total, False

    async def _warmups(
        self, lane: Lane, batch_id: str, candidates: Sequence[tuple[str, int, str]], urgent_until_ms: int
    ) -> tuple[tuple[str, int, str] | None, set[str]]:
        """The one job of a warm-up batch to send now (claiming its group's warm-up for ``batch_id``),
        else None; and the groups whose warm-up batch has not ended yet, whose jobs wait.

        A group of at least ``warmup_min_group`` candidates is warmed once per
        :data:`keys.PREFIX_WARMUP_TTL_S`. While any candidate is under deadline pressure no warm-up
        is sent: that batch must go now, whole.
        """
        assert lane.warmup_min_group is not None
        sizes = Counter(prefix for _, _, prefix in candidates if prefix)
        large = [prefix for prefix, size in sizes.items() if size >= lane.warmup_min_group]
        if not large:
            return None, set()
        async with self.redis.pipeline(transaction=False) as pipe:
            for prefix in large:
                pipe.get(keys.prefix_warmup(lane.name, prefix))
            claimed: list[bytes | None] = await pipe.execute()
        urgent = any(deadline <= urgent_until_ms for _, deadline, _ in candidates)
        held: set[str] = set()
        for prefix, warmup_batch in zip(large, claimed, strict=True):
            if warmup_batch is None:
                if urgent:
                    continue
                key = keys.prefix_warmup(lane.name, prefix)
                if await self.redis.set(key, batch_id, nx=True, ex=keys.PREFIX_WARMUP_TTL_S):
                    return next(c for c in candidates if c[2] == prefix), set()
                continue
            state = await self.redis.hget(keys.batch(warmup_batch.decode()), "state")  # type: ignore[misc]
            if state in (b"planned", b"submitted"):
                held.add(prefix)
        return None, held

    async def _prefixes(self, job_ids: Sequence[bytes]) -> list[bytes]:
        """The jobs' prefix keys (b"" for none), in one pipelined round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(keys.job(job_id.decode()), "prefix")
            found = await pipe.execute() if job_ids else []
        return [p or b"" for p in found]

    async def get(self, batch_id: str) -> BatchRecord | None:
        raw: dict[bytes, bytes] = await self.redis.hgetall(keys.batch(batch_id))  # type: ignore[misc]
        return BatchRecord.from_hash(raw) if raw else None

    async def mark_submitted(
        self, batch_id: str, provider: str, provider_batch_id: str, *, now_ms: int, poll_s: float, how: str
    ) -> str:
        """Record the provider's id on a planned batch; ``ok``, ``skip:<state>``, ``claimed:<batch>``, ``missing``."""
        status, detail = await self._submitted(
            keys=[
                keys.batch(batch_id),
                keys.BATCHES_PLANNED,
                keys.BATCHES_POLL,
                keys.BATCHES_LIVE,
                keys.provider_batches(provider),
            ],
            args=[provider_batch_id, now_ms, now_ms + int(poll_s * 1000), poll_s, how],
        )
        return "ok" if status == b"ok" else f"{status.decode()}:{detail.decode()}".rstrip(":")

    async def record_duplicate(
        self, original_id: str, provider: str, provider_batch_id: str, *, now_ms: int, poll_s: float
    ) -> str | None:
        """Record a second provider batch of ``original_id`` as its own batch; its id, or None if known."""
        duplicate_id = f"{original_id}_dup_{provider_batch_id}"[:120]
        reply = await self._duplicate(
            keys=[
                keys.batch(duplicate_id),
                keys.batch(original_id),
                keys.BATCHES_POLL,
                keys.BATCHES_LIVE,
                keys.provider_batches(provider),
            ],
            args=[duplicate_id, original_id, provider_batch_id, now_ms, now_ms + int(poll_s * 1000), poll_s],
        )
        return duplicate_id if reply[0] == b"ok" else None

    async def update(
        self,
        batch_id: str,
        from_states: Sequence[str],
        *,
        now_ms: int,
        to_state: str = "",
        next_poll_ms: int | str = "",
        increment: str = "",
        **fields: Any,
    ) -> Update:
        """Change a batch only from one of ``from_states``: state, next poll time, one counter, fields."""
        args: list[Any] = [",".join(from_states), to_state, next_poll_ms, now_ms, increment]
        for name, value in fields.items():
            args.extend((name, value))
        status, prior, incremented = await self._update(
            keys=[
                keys.batch(batch_id),
                keys.BATCHES_PLANNED,
                keys.BATCHES_POLL,
                keys.BATCHES_LIVE,
                keys.BATCHES_FAILED,
                keys.BATCHES_CLOSED,
                keys.BATCHES_ENDED,
            ],
            args=args,
        )
        return Update(status.decode(), prior.decode(), int(incremented) if incremented else None)

    async def lease(
        self,
        batch_id: str,
        mode: str,
        holder: str,
        *,
        now_ms: int,
        until_ms: int = 0,
        create_cutoff_ms: int = 0,
    ) -> str:
        """One step of a planned batch's submission lease (``batch_lease.lua``): ``acquire`` (refused
        while another holder's lease runs or its create began after ``create_cutoff_ms``), ``renew``,
        ``create`` (renew and stamp ``create_started_ms``) or ``release``; only the holder renews.

        Returns ``ok``, ``held:<holder>``, ``creating:<ms>``, ``skip:<state>`` or ``missing``.
        """
        status, detail = await self._lease(
            keys=[keys.batch(batch_id)], args=[mode, holder, now_ms, until_ms, create_cutoff_ms]
        )
        return "ok" if status == b"ok" else f"{status.decode()}:{detail.decode()}".rstrip(":")

    async def job_ids(self, batch_id: str, chunk: int = 1000) -> AsyncIterator[list[str]]:
        """The batch's job ids in chunks (SSCAN: a set member present throughout is returned at least once)."""
        seen: set[str] = set()
        cursor = 0
        while True:
            cursor, members = await self.redis.sscan(keys.batch_jobs(batch_id), cursor, count=chunk)
            fresh = [m.decode() for m in members if m.decode() not in seen]
            seen.update(fresh)
            if fresh:
                yield fresh
            if cursor == 0:
                return

    async def due_polls(self, now_ms: int, limit: int = 1000) -> list[tuple[str, int]]:
        """Batches whose next poll is due, with their due time (ms)."""
        rows = await self.redis.zrangebyscore(
            keys.BATCHES_POLL, "-inf", now_ms, start=0, num=limit, withscores=True
        )
        return [(m.decode(), int(score)) for m, score in rows]

    async def planned_before(self, before_ms: int, limit: int = 1000) -> list[str]:
        """Planned batches planned before ``before_ms``: candidates for reconciliation."""
        rows = await self.redis.zrangebyscore(keys.BATCHES_PLANNED, "-inf", before_ms, start=0, num=limit)
        return [m.decode() for m in rows]

    async def claimed(self, provider: str) -> dict[str, str]:
        """Provider batch id → our batch id, for every provider batch of ``provider`` we know."""
        raw: dict[bytes, bytes] = await self.redis.hgetall(keys.provider_batches(provider))  # type: ignore[misc]
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def push_turnaround(self, lane: str, end_ms: int, seconds: float, history: int) -> None:
        """Add one turnaround sample (``<end_ms>:<seconds>``) to the lane's capped history, and to
        the ``batchshift_batch_turnaround_seconds`` histogram in the same transaction."""
        async with self.redis.pipeline(transaction=True) as pipe:
            samples.push_sample(pipe, keys.lane_turnarounds(lane), end_ms, seconds, history)
            metrics.observe_turnaround(pipe, lane, seconds)
            await pipe.execute()

    async def hold_lane(self, lane: str, until_ms: int, now_ms: int) -> None:
        """Keep the lane from flushing before ``until_ms`` (after a token-limit refusal)."""
        if until_ms > now_ms:
            # The stamp ends the hold (the planner reads it against the tick's now); PX only clears
            # it away later (keys.HOLD_GRACE_S).
            await self.redis.set(
                keys.lane_hold(lane), until_ms, px=until_ms - now_ms + keys.HOLD_GRACE_S * 1000
            )
