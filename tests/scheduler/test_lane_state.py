"""Lane states with hysteresis, and burn rates summed over windows from the ledger's SLO buckets."""

from __future__ import annotations

import pytest

from config.settings import BurnRule, SloSettings
from scheduler.ledger import keys
from scheduler.ledger.clock import ServerClock, server_ms
from scheduler.ledger.ledger import Finish, Ledger
from scheduler.slo.burn import BucketWindows
from scheduler.slo.lane_state import Evidence, LaneSloState, transition
from tests.conftest import make_settings
from tests.scheduler.slo_support import LANE, enqueue

NOW = 1_800_000_000_000


def test_worse_at_once_better_only_after_calm_ticks():
    s = LaneSloState("healthy", 0, 0)
    s = transition(s, "breaching", 1, recover_ticks=3)
    assert s.state == "breaching"
    assert s.since_ms == 1
    s = transition(s, "healthy", 2, recover_ticks=3)
    s = transition(s, "healthy", 3, recover_ticks=3)
    assert s.state == "breaching"
    s = transition(s, "breaching", 4, recover_ticks=3)  # a relapse resets the calm count
    assert s.calm_ticks == 0
    for t in (5, 6, 7):
        s = transition(s, "healthy", t, recover_ticks=3)
    assert s.state == "lagging"  # one level at a time
    for t in (8, 9, 10):
        s = transition(s, "healthy", t, recover_ticks=3)
    assert s.state == "healthy"
    assert s.since_ms == 10


def test_evidence_targets(redis_url):
    settings = make_settings(redis_url, slo=SloSettings(lagging_factor=2))
    assert Evidence(usual_turnaround_s=10, slowest_elapsed_s=15).target(settings) == "healthy"
    lagging = Evidence(usual_turnaround_s=10, slowest_elapsed_s=25)
    assert lagging.target(settings) == "lagging"
    assert lagging.reasons
    assert Evidence(usual_turnaround_s=10, latest_turnaround_s=30).target(settings) == "lagging"
    assert Evidence(usual_turnaround_s=10, at_risk=2).target(settings) == "breaching"
    assert Evidence(usual_turnaround_s=10, late_recent=1).target(settings) == "breaching"


async def finish_jobs(ledger, now_ms, deadlines_s, route="batch"):
    ids = await enqueue(ledger, now_ms - 100_000, deadlines_s)
    items = [Finish(j, "succeeded", route, from_states=("queued",)) for j in ids]
    assert await ledger.finish(items, now_ms) == ["ok"] * len(ids)


async def test_burn_windows_sum_the_ledgers_buckets(redis):
    """Late jobs (deadline passed at finish) count as bad; windows slide; old buckets are deleted."""
    ledger = Ledger(redis, slo_bucket_s=1)
    windows = BucketWindows(LANE, 1, [5, 60])
    await finish_jobs(ledger, NOW, [1000, 1000, 1000])  # on time
    await finish_jobs(ledger, NOW + 30_000, [10], route="sync")  # late, by sync
    await windows.refresh(redis, (NOW + 31_000) / 1000)
    wide, narrow = windows.sums(60), windows.sums(5)
    assert (wide.all, wide.good, wide.bad, wide.sync) == (4, 3, 1, 1)
    assert (narrow.all, narrow.bad) == (1, 1)
    assert wide.burn_rate(0.9) == pytest.approx(0.25 / 0.1)
    # Incremental: a later finish is folded in, the old ones slide out of the narrow window.
    await finish_jobs(ledger, NOW + 40_000, [1000])
    await windows.refresh(redis, (NOW + 43_000) / 1000)
    assert windows.sums(5).all == 1
    assert windows.sums(5).bad == 0
    assert windows.sums(60).all == 5
    # Far later: everything slid out, and buckets past the longest window are gone from Redis.
    for t in range(100, 200, 10):
        await windows.refresh(redis, (NOW + t * 1000) / 1000)
    assert windows.sums(60).all == 0
    await BucketWindows(LANE, 1, [5, 60]).refresh(redis, (NOW + 200_000) / 1000)
    assert await redis.hlen(keys.slo_buckets(LANE)) == 0


async def test_burn_windows_reload_matches_incremental(redis):
    ledger = Ledger(redis, slo_bucket_s=1)
    live = BucketWindows(LANE, 1, [10, 30])
    for i in range(6):
        await finish_jobs(ledger, NOW + i * 2_000, [1000 if i % 2 else 1])
        await live.refresh(redis, (NOW + i * 2_000) / 1000)
    at = (NOW + 14_000) / 1000
    await live.refresh(redis, at)
    fresh = BucketWindows(LANE, 1, [10, 30])
    await fresh.refresh(redis, at)
    for w in (10, 30):
        assert live.sums(w) == fresh.sums(w)


def test_default_burn_rules_are_the_workbooks():
    rules = SloSettings().burn_rules
    assert [(r.factor, r.long_window_s, r.short_window_s) for r in rules] == [
        (14.4, 3600, 300),
        (6, 21600, 1800),
        (1, 259200, 21600),
    ]
    assert BurnRule(severity="page", factor=2, long_window_s=10, short_window_s=1).short_window_s == 1


async def test_a_worker_20s_behind_still_counts_its_late_job_in_the_burn_windows(redis):
    """The workers' ledger stamps a job's end with Redis's clock: a worker whose own clock is 20 s
    behind neither judges a late job on time nor writes it into a bucket the scheduler has folded."""
    ledger = Ledger(redis, slo_bucket_s=1, clock=ServerClock(redis))
    server = await server_ms(redis)
    ids = await enqueue(ledger, server - 100_000, [90])  # its deadline passed 10 s ago
    windows = BucketWindows(LANE, 1, [60, 3600])
    await windows.refresh(redis, server / 1000)  # the scheduler has folded every bucket before now
    behind = server - 20_000  # by this worker's clock the deadline is still 10 s away
    items = [Finish(j, "succeeded", "sync", from_states=("queued",)) for j in ids]
    assert await ledger.finish(items, behind) == ["ok"]
    await windows.refresh(redis, await server_ms(redis) / 1000)
    counted = windows.sums(60)
    assert (counted.all, counted.bad) == (1, 1)
    assert (await ledger.get(ids[0])).completed_ms >= server
