"""The outbox's shared parts: the retry schedule, and settling only while the claim is still ours."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import random
import time
from typing import Any

import httpx
import orjson
import pytest
from redis import exceptions as redis_exceptions

from config.settings import AlertSettings
from scheduler.ledger import keys
from scheduler.ledger.clock import ManualClock, server_ms
from workers.alerts import AlertSender, terms
from workers.outbox import Item, Outbox, Outcome, Report, Terms, Verdict, retry_delay

LATER_MS = int((time.time() + 3600) * 1000)  # a caller's "now" by which every lease's end is due
SCHEDULE = Terms(
    name="t",
    due_key="due",
    dead_key="dead",
    record_prefix="item:",
    lease_s=60,
    timeout_s=10,
    claim_batch=10,
    concurrency=10,
    group_hold=10,
    retry_schedule_s=[5, 30, 120],
)


def test_each_failed_attempt_waits_its_step_then_the_item_is_dead() -> None:
    rng = random.Random(1)
    assert [retry_delay(SCHEDULE, n, rng, None) for n in (1, 2, 3, 4)] == [5, 30, 120, None]


def test_jitter_stays_within_its_share_of_the_step() -> None:
    jittered = dataclasses.replace(SCHEDULE, jitter=0.2)
    delays = [retry_delay(jittered, 2, random.Random(seed), None) for seed in range(200)]
    assert all(24 <= d <= 36 for d in delays if d is not None)
    assert len(set(delays)) > 1


@pytest.mark.parametrize(("asked", "delay"), [(1, 30), (60, 60), (86400, 120)])
def test_retry_after_wins_when_longer_up_to_the_longest_step(asked: float, delay: float) -> None:
    assert retry_delay(SCHEDULE, 2, random.Random(1), asked) == delay


async def test_an_outcome_settles_only_under_the_claim_that_is_still_live(redis) -> None:
    """A worker whose lease ran out, and whose item another worker claimed, settles nothing."""
    alerts = AlertSettings(timeout_s=0.01, lease_s=0.05)
    nid = "alt_1.slack"
    await redis.hset(keys.alert_notification(nid), mapping={"id": nid, "channel": "slack", "attempts": 0})
    await redis.zadd(keys.ALERTS_DUE, {nid: 0})
    client = httpx.AsyncClient()  # never sends: the test settles by hand
    first, second = AlertSender(redis, client, alerts), AlertSender(redis, client, alerts)
    outbox = terms(alerts)

    async def claim(sender: AlertSender, token: str, lease_ms: int) -> list[bytes]:
        ids, _ = await sender._claim(
            keys=[outbox.due_key],
            args=[LATER_MS, lease_ms, 10, token, outbox.record_prefix, 10, b"{}", 40, await server_ms(redis)],
        )
        return ids

    assert await claim(first, "first", 50) == [nid.encode()]
    await asyncio.sleep(0.2)  # past the 50 ms lease on the Redis server's clock
    assert await claim(second, "second", 30_000) == [nid.encode()]
    late = Outcome(nid, "first", "sent", "done", "sent", True, status_code=200)
    await first._apply([late], 1, first._new_report())
    assert await redis.hget(keys.alert_notification(nid), "lease") == b"second"
    assert await redis.zscore(keys.ALERTS_DUE, nid) is not None
    live = Outcome(nid, "second", "retry", "retry", "failing", True, next_ms=5000, error="ConnectionFailed")
    await second._apply([live], 1, second._new_report())
    record = await redis.hgetall(keys.alert_notification(nid))
    assert record[b"attempts"] == b"1"
    assert record[b"last_error"] == b"ConnectionFailed"
    assert b"lease" not in record
    assert await redis.zscore(keys.ALERTS_DUE, nid) == 5000
    await client.aclose()


@pytest.mark.parametrize(
    ("now", "code", "error"),
    [
        (1_764_523_251_000, 200, None),
        (1_764_523_251_007, 500, "HTTP 500"),
        (1_764_523_251_999, None, 'timeout: "slow" / \\ \u00e9\n\t\x01 ' + "x" * 300),
        (123_456_789_012_345, 503, "a/b"),  # 15 digits: cjson writes it in exponent form
        (1_764_523_250_000, 410, "410 Gone"),
        (0, None, ""),
        (1_764_523_251_001, 502, "x" + "\u00e9" * 150),  # cut at 200 bytes, inside a character
        (1_764_523_251_002, 500, '\u2028\u2029 \x7f \x00 \x1f \\\\ "" 日本 \U0001f600' * 12),
        (99_999_999_999_999, 429, "\\u0041 </script>"),  # 14 digits: still plain
    ],
)
async def test_the_first_attempt_log_entry_is_what_cjson_writes(redis, now, code, error) -> None:
    """The settle writes the first entry without encoding a log: the same bytes as encoding it."""
    alerts = AlertSettings()
    sender = AlertSender(redis, httpx.AsyncClient(), alerts)
    outbox = terms(alerts)
    nid = "alt_log.slack"
    await redis.hset(outbox.record_prefix + nid, mapping={"id": nid, "lease": "tok", "attempts": 0})
    await redis.zadd(outbox.due_key, {nid: 0})
    failed = Outcome(
        nid, "tok", "retry", "retry", "failing", True, delay_ms=1000, status_code=code, error=error
    )
    await sender._apply([failed], now, sender._new_report())
    written = await redis.hget(outbox.record_prefix + nid, "attempt_log")
    cut = (error or "").encode()[:200].decode(errors="ignore")  # 200 bytes of whole characters
    expected = await redis.eval(
        "return cjson.encode({{tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]}})", 0, now, code or 0, cut
    )
    assert written == expected
    assert orjson.loads(written)[0][2] == cut  # what the console's timeline parses
    assert await redis.zscore(outbox.due_key, nid) == now + 1000


@dataclasses.dataclass(slots=True)
class SentReport(Report):
    sent: int = 0


class GatedOutbox(Outbox[str, SentReport]):
    """A kind whose sends wait on their group's gate: the test decides when each group's sends end."""

    def __init__(self, redis, terms_: Terms, gates: dict[str, asyncio.Event]) -> None:
        super().__init__(redis, terms_)
        self.gates = gates
        self.sent: list[str] = []
        self.started: dict[str, asyncio.Event] = collections.defaultdict(asyncio.Event)
        self.done: dict[str, asyncio.Event] = collections.defaultdict(asyncio.Event)

    def _new_report(self) -> SentReport:
        return SentReport()

    async def _load(self, ids: list[str]) -> list[Item[str]]:
        groups = [await self.redis.hget(self.terms.record_prefix + i, "tenant") for i in ids]
        return [Item(i, 0, g.decode(), i) for i, g in zip(ids, groups, strict=True)]

    async def _send(self, item: Item[str]) -> Verdict:
        self.started[item.id].set()
        await self.gates[item.group].wait()
        self.sent.append(item.id)
        self.done[item.id].set()
        return Verdict("sent", "done")


async def _due(redis, terms_: Terms, group: str, *ids: str) -> None:
    for n, item_id in enumerate(ids):
        await redis.hset(terms_.record_prefix + item_id, mapping={"id": item_id, "tenant": group})
        await redis.zadd(terms_.due_key, {item_id: n})


async def test_a_group_filling_its_hold_does_not_hold_back_what_other_groups_have_due(redis) -> None:
    """A slow group holds its whole hold, with more of it due: the drain waits for a share of that
    group's sends to end before asking again, but a send of another group ending makes it claim at
    once, so what that group has due meanwhile goes out while the slow group's sends still hang."""
    gated = dataclasses.replace(SCHEDULE, due_key="gated:due", record_prefix="gated:", group_hold=4)
    gates = {"slow": asyncio.Event(), "fast": asyncio.Event()}
    outbox = GatedOutbox(redis, gated, gates)
    await _due(redis, gated, "slow", *(f"s{n}" for n in range(6)))  # 4 held, 2 left: blocked
    await _due(redis, gated, "fast", "f0")
    drain = asyncio.create_task(outbox.drain(outbox.lease_clock.now_ms, budget_s=3600))
    await asyncio.wait_for(outbox.started["f0"].wait(), 30)  # the first claim took f0
    await _due(redis, gated, "fast", "f1", "f2")  # due while the drain is blocked
    gates["fast"].set()
    try:
        async with asyncio.timeout(30):
            await outbox.done["f1"].wait()
            await outbox.done["f2"].wait()
    finally:
        gates["slow"].set()  # and the slow group's sends end: the drain delivers the rest
    await asyncio.wait_for(drain, 30)
    assert sorted(outbox.sent) == ["f0", "f1", "f2", *(f"s{n}" for n in range(6))]
    assert not any(s.startswith("s") for s in outbox.sent[: outbox.sent.index("f2")])


class LostClaimOutbox(GatedOutbox):
    """A kind on a virtual clock whose claim call carrying outcomes to settle fails before it reaches
    Redis (a lost connection), as many times as ``failures`` says."""

    def __init__(self, redis, terms_: Terms, clock: ManualClock, failures: int) -> None:
        super().__init__(redis, terms_, collections.defaultdict(_open_gate))
        self.lease_clock = clock
        self._server_time = False
        self.failures = failures

    async def _claim_items(self, args: list[Any]) -> tuple[list[Item[str]], bool]:
        if args[9] and self.failures:  # ARGV 10: the outcomes this claim settles first
            self.failures -= 1
            raise redis_exceptions.ConnectionError("connection lost")
        return await super()._claim_items(args)


def _open_gate() -> asyncio.Event:
    gate = asyncio.Event()
    gate.set()
    return gate


async def test_outcomes_lost_with_a_failed_claim_call_are_sent_again_after_the_lease(redis) -> None:
    """Sends whose outcomes rode on a claim call that failed stay claimed and due at the lease's end:
    nothing is dropped from the due set, and the next drain after the lease sends and settles them."""
    terms_ = dataclasses.replace(SCHEDULE, due_key="lost:due", record_prefix="lost:", claim_batch=2)
    clock = ManualClock(1_000_000)
    await _due(redis, terms_, "g", "a", "b", "c")
    failing = LostClaimOutbox(redis, terms_, clock, failures=1)
    with pytest.raises(redis_exceptions.ConnectionError):
        await failing.drain(clock.now_ms, budget_s=3600)
    assert sorted(failing.sent) == ["a", "b"]  # sent, then the claim carrying their outcomes failed
    lease_end = clock.ms + int(terms_.lease_s * 1000)
    for item_id in ("a", "b"):
        assert await redis.zscore(terms_.due_key, item_id) == lease_end
        record = await redis.hgetall(terms_.record_prefix + item_id)
        assert b"lease" in record
        assert b"status" not in record
    assert await redis.zscore(terms_.due_key, "c") == 2  # never claimed
    again = LostClaimOutbox(redis, terms_, clock, failures=0)
    assert (await again.drain(clock.now_ms, budget_s=3600)).claimed == 1  # a and b are still leased
    clock.advance(terms_.lease_s)
    assert (await again.drain(clock.now_ms, budget_s=3600)).claimed == 2
    assert sorted(again.sent) == ["a", "b", "c"]
    assert await redis.zcard(terms_.due_key) == 0
    for item_id in ("a", "b", "c"):
        record = await redis.hgetall(terms_.record_prefix + item_id)
        assert (record[b"status"], record[b"attempts"]) == (b"sent", b"1")
        assert b"lease" not in record


async def test_an_outcome_applied_again_settles_nothing(redis) -> None:
    """A settle that is sent again (a claim call retried after its reply was lost) changes nothing:
    the first one ended the claim it was fenced by."""
    terms_ = dataclasses.replace(SCHEDULE, due_key="twice:due", record_prefix="twice:")
    clock = ManualClock(1_000_000)
    await _due(redis, terms_, "g", "a")
    outbox = LostClaimOutbox(redis, terms_, clock, failures=0)
    claimed, _ = await outbox._claim_and_start(clock.ms, 1, in_flight := {})
    assert claimed == 1
    [outcome] = await asyncio.gather(*in_flight)
    failed = dataclasses.replace(outcome, action="retry", settle="retry", status="failing", delay_ms=5000)
    for _ in range(2):
        await outbox._apply([failed], clock.ms, outbox._new_report())
    record = await redis.hgetall(terms_.record_prefix + "a")
    assert (record[b"attempts"], record[b"status"]) == (b"1", b"failing")
    assert len(orjson.loads(record[b"attempt_log"])) == 1
    assert await redis.zscore(terms_.due_key, "a") == clock.ms + 5000


async def test_a_cancelled_drains_claims_are_sent_again_after_the_lease(redis) -> None:
    """A drain cancelled with sends in flight (the task's timeout) leaves its items claimed and due at
    the lease's end; the next drain after it sends them."""
    terms_ = dataclasses.replace(SCHEDULE, due_key="cancel:due", record_prefix="cancel:")
    clock = ManualClock(1_000_000)
    await _due(redis, terms_, "g", "a", "b")
    stuck = GatedOutbox(redis, terms_, {"g": asyncio.Event()})
    stuck.lease_clock, stuck._server_time = clock, False
    drain = asyncio.create_task(stuck.drain(clock.now_ms, budget_s=3600))
    await asyncio.wait_for(stuck.started["b"].wait(), 30)
    drain.cancel()
    with pytest.raises(asyncio.CancelledError):
        await drain
    lease_end = clock.ms + int(terms_.lease_s * 1000)
    assert await redis.zrange(terms_.due_key, 0, -1, withscores=True) == [
        (b"a", lease_end),
        (b"b", lease_end),
    ]
    clock.advance(terms_.lease_s)
    again = LostClaimOutbox(redis, terms_, clock, failures=0)
    assert (await again.drain(clock.now_ms, budget_s=3600)).claimed == 2
    assert sorted(again.sent) == ["a", "b"]
    assert await redis.zcard(terms_.due_key) == 0


async def test_sends_ending_after_the_budget_are_settled_before_the_drain_returns(redis) -> None:
    """The budget stops claiming, not settling: what ends after it is settled, the rest stays due."""
    terms_ = dataclasses.replace(SCHEDULE, due_key="budget:due", record_prefix="budget:", claim_batch=2)
    clock = ManualClock(1_000_000)
    await _due(redis, terms_, "g", "a", "b", "c")
    gate = asyncio.Event()
    outbox = GatedOutbox(redis, terms_, {"g": gate})
    outbox.lease_clock, outbox._server_time = clock, False
    elapsed = [0.0]
    outbox.monotonic = lambda: elapsed[0]
    drain = asyncio.create_task(outbox.drain(clock.now_ms, budget_s=10))
    await asyncio.wait_for(outbox.started["b"].wait(), 30)
    elapsed[0] = 20.0  # the budget is spent while both sends are in flight
    gate.set()
    report = await asyncio.wait_for(drain, 30)
    assert (report.claimed, report.sent) == (2, 2)
    for item_id in ("a", "b"):
        record = await redis.hgetall(terms_.record_prefix + item_id)
        assert record[b"status"] == b"sent"
        assert b"lease" not in record
    assert await redis.zrange(terms_.due_key, 0, -1, withscores=True) == [(b"c", 2.0)]
