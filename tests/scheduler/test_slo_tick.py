"""The SLO tick step inside the scheduler, and GET /v1/lanes showing what it saw."""

from __future__ import annotations

import time
from collections import Counter

from config.settings import AlertSettings, SloSettings
from scheduler.ledger import keys
from scheduler.ledger.ledger import Ledger
from scheduler.ledger.samples import sample
from scheduler.service import Scheduler, build_scheduler
from scheduler.slo.tracker import SloReport, SloTracker
from tests.api.harness import ACME, ADMIN, asgi_client
from tests.conftest import make_settings
from tests.scheduler.slo_support import LANE, enqueue, lead, new_job, submitted_batch

NOW = 1_800_000_000_000


def tracker(settings, redis, arq_pool) -> SloTracker:
    """The SLO step on its own, as build_scheduler builds it."""
    return SloTracker(settings, redis, arq_pool, Ledger.for_settings(redis, settings))


async def test_tick_flips_at_risk_jobs_before_planning_and_reports(redis, redis_url, arq_pool):
    settings = make_settings(
        redis_url, slo=SloSettings(prior_turnaround_s=10, default_sync_latency_s=1, recover_ticks=2)
    )
    ledger = Ledger(redis)
    near, far = await enqueue(ledger, NOW, [3, 3600])  # 3 s: its last safe moment has come
    scheduler = build_scheduler(settings, redis, arq_pool, holder="t")
    assert scheduler.steps[0][0] == "slo"
    report = await scheduler.tick(NOW / 1000)
    slo = report.steps["slo"]
    assert isinstance(slo, SloReport)
    assert slo.flipped == 1
    assert slo.lanes[LANE].state == "breaching"
    assert (await ledger.get(near)).state == "sync"
    # Nothing more at risk: the lane calms down one level per recover_ticks ticks.
    states = []
    for i in range(1, 5):
        states.append((await scheduler.tick(NOW / 1000 + i)).steps["slo"].lanes[LANE].state)
    assert states == ["breaching", "lagging", "lagging", "healthy"]
    assert (await ledger.get(far)).state in ("queued", "batched")


async def test_get_lanes_shows_the_snapshot_to_the_admin_only(redis, redis_url, arq_pool):
    settings = make_settings(redis_url, slo=SloSettings(prior_turnaround_s=10, default_sync_latency_s=1))
    now = int(time.time() * 1000) - 5_000  # the API measures ages on the real clock
    await enqueue(Ledger(redis), now, [3600, 7200])
    await tracker(settings, redis, arq_pool).run(now, await lead(redis))
    async with asgi_client(settings, redis, ADMIN) as client:
        response = await client.get("/v1/lanes")
        assert response.status_code == 200
        (lane,) = response.json()["data"]
        assert lane["lane"] == LANE
        assert lane["state"] == "healthy"
        assert lane["queued"] == 2
        assert lane["oldest_job_age_s"] > 0
        assert lane["batches_in_flight"] == 0
        assert lane["turnaround_s"]["prior"] == 10
        assert lane["predicted_oldest_completion"].endswith("Z")
        assert set(lane["burn_rates"]) == {"burn_page_3600s", "burn_page_21600s", "burn_ticket_259200s"}
        assert lane["sync_share"] is None
        forbidden = await client.get("/v1/lanes", headers=ACME)
        assert forbidden.status_code == 403


async def test_lanes_command_prints_the_table(redis, redis_url, arq_pool, capsys, monkeypatch):
    import asyncio

    from api.app import create_app
    from batchshift.cli import main
    from tests.api.harness import serve

    settings = make_settings(redis_url, slo=SloSettings(prior_turnaround_s=10, default_sync_latency_s=1))
    now = int(time.time() * 1000)
    await enqueue(Ledger(redis), now, [3600])
    await tracker(settings, redis, arq_pool).run(now, await lead(redis))
    monkeypatch.setenv("COLUMNS", "250")  # rich truncates cells to the terminal's width
    with serve(create_app(settings)) as url:
        code = await asyncio.to_thread(main, ["lanes", "--url", url, "--api-key", "admin-key"])
    out = capsys.readouterr().out
    assert code == 0
    assert "healthy" in out
    assert "openai:gpt-4o-mini" in out


async def test_an_idle_lane_recovers_after_a_slow_batch_and_its_page_resolves(redis, redis_url, arq_pool):
    """The stalled batch finally ended slow and then no traffic came: the lane must not stay lagging
    (and paged) until that sample ages out of the history a week later."""
    settings = make_settings(
        redis_url,
        slo=SloSettings(prior_turnaround_s=10, default_sync_latency_s=1, recover_ticks=2),
        alerts=AlertSettings(resolve_after_s=60),
    )
    ledger = Ledger(redis)
    (job_id,) = await enqueue(ledger, NOW, [3600])
    await ledger.cancel(job_id, NOW)  # the lane is known, and idle
    usual = [sample(NOW - 3_600_000 + i * 60_000, 10.0) for i in range(5)]
    await redis.lpush(keys.lane_turnarounds(LANE), *usual, sample(NOW, 100.0))
    scheduler = build_scheduler(settings, redis, arq_pool, holder="t")
    first = (await scheduler.tick(NOW / 1000)).steps["slo"]
    assert first.lanes[LANE].state == "lagging"
    assert first.lanes[LANE].alerts == ["trigger:health"]
    seen = []
    for minute in range(10, 130):  # two idle hours, a tick a minute
        lane = (await scheduler.tick(NOW / 1000 + minute * 60)).steps["slo"].lanes[LANE]
        seen += lane.alerts
    assert lane.state == "healthy"
    assert seen == ["resolve:health"]


async def test_a_leader_back_after_another_led_takes_the_lane_state_it_left(redis, redis_url, arq_pool):
    """A judged the lane breaching, lost the lease; B saw it recover and resolved the page. When A
    leads again it must not revive its own stale memory of the lane and page a second time."""
    settings = make_settings(
        redis_url,
        slo=SloSettings(prior_turnaround_s=10, default_sync_latency_s=1, recover_ticks=2),
        alerts=AlertSettings(resolve_after_s=0),
    )
    ledger = Ledger(redis)
    await enqueue(ledger, NOW, [3])
    a = build_scheduler(settings, redis, arq_pool, holder="a")
    b = build_scheduler(settings, redis, arq_pool, holder="b")
    first = (await a.tick(NOW / 1000)).steps["slo"].lanes[LANE]
    assert (first.state, first.alerts) == ("breaching", ["trigger:health"])
    await a.leader.release()  # A stalls past its lease; B takes over
    alerts = []
    for i in range(1, 8):
        lane = (await b.tick(NOW / 1000 + i)).steps["slo"].lanes[LANE]
        alerts += lane.alerts
    assert lane.state == "healthy"
    assert alerts == ["resolve:health"]
    await b.leader.release()
    back = (await a.tick(NOW / 1000 + 10)).steps["slo"].lanes[LANE]
    assert (back.state, back.alerts) == ("healthy", [])


async def _commands_of_tick(redis, scheduler: Scheduler, now_s: float) -> Counter[str]:
    """Commands Redis ran during one tick, by name, from its own counters (``INFO commandstats``)."""
    before = await redis.info("commandstats")
    report = await scheduler.tick(now_s)
    after = await redis.info("commandstats")
    assert report.leader
    assert not report.errors, report.errors
    calls = Counter(
        {k.removeprefix("cmdstat_"): v["calls"] - before.get(k, {}).get("calls", 0) for k, v in after.items()}
    )
    calls["info"] -= 1  # the INFO that read ``before``
    return +calls


async def _active_lanes(ledger: Ledger, now_ms: int, names: range) -> None:
    """One lane per name in ``names``, each with two jobs due in a day (nothing at risk, nothing to flush)."""
    jobs = [new_job(now_ms, 86_400) for _ in names for _ in range(2)]
    for i, n in enumerate(names):
        for job in jobs[i * 2 : i * 2 + 2]:
            job.model = f"m-{n}"
    await ledger.enqueue_many(jobs)


# Commands a whole tick sends per active lane with nothing at risk: the SLO step's reads (2 sample
# lists, the queue's two ends, the open incidents, the SLO buckets, the lane's meta), its snapshot
# (written in the one fenced script call of all lanes), and the plan step's (meta and 6 reads).
COMMANDS_PER_LANE = 15


async def test_a_ticks_redis_commands_grow_by_a_constant_per_lane(redis, redis_url, arq_pool):
    settings = make_settings(redis_url, slo=SloSettings(prior_turnaround_s=60))
    ledger = Ledger(redis)
    await _active_lanes(ledger, NOW, range(10))
    scheduler = build_scheduler(settings, redis, arq_pool, holder="t")
    await scheduler.tick(NOW / 1000)  # a term's first tick also reconciles and adopts the registry
    await scheduler.tick(NOW / 1000 + 1)
    small = await _commands_of_tick(redis, scheduler, NOW / 1000 + 2)
    await _active_lanes(ledger, NOW, range(10, 40))
    await scheduler.tick(NOW / 1000 + 3)  # the new lanes' first tick reads their whole history
    large = await _commands_of_tick(redis, scheduler, NOW / 1000 + 4)
    per_lane = {name: (large[name] - small[name]) / 30 for name in large | small}
    assert sum(per_lane.values()) <= COMMANDS_PER_LANE, per_lane
    # Nothing at risk anywhere: no lane reads a flip range, and every lane's fenced writes are one script call.
    assert large["zrangebyscore"] == small["zrangebyscore"], per_lane
    assert large["evalsha"] == small["evalsha"]


async def test_batches_in_flight_with_nothing_at_risk_add_no_flip_reads(redis, redis_url, arq_pool):
    """A batch's deadline index is read with every lane's reads; with nothing at risk the flipper
    reads no range of it and does not check it for emptiness one batch at a time."""
    settings = make_settings(redis_url, slo=SloSettings(prior_turnaround_s=60))
    ledger = Ledger(redis)

    async def batches(count: int) -> None:
        for _ in range(count):
            await enqueue(ledger, NOW, [86_400, 86_400])
            await submitted_batch(redis, settings, NOW)
        await redis.delete(keys.LEADER_LEASE)  # the helper's lease; the scheduler leads from here

    await batches(1)
    scheduler = build_scheduler(settings, redis, arq_pool, holder="t")
    await scheduler.tick(NOW / 1000 + 1)  # builds the batch's deadline index
    one = await _commands_of_tick(redis, scheduler, NOW / 1000 + 2)
    await scheduler.close()
    await batches(3)
    scheduler = build_scheduler(settings, redis, arq_pool, holder="t")
    await scheduler.tick(NOW / 1000 + 3)
    four = await _commands_of_tick(redis, scheduler, NOW / 1000 + 4)
    per_batch = {name: (four[name] - one[name]) / 3 for name in four | one}
    assert four["zrangebyscore"] == one["zrangebyscore"], per_batch
    # Its row (live_batches) and its index's existence, size and earliest deadline, all pipelined.
    assert sum(per_batch.values()) <= 4, per_batch
    assert not (await scheduler.tick(NOW / 1000 + 5)).steps["slo"].flipped
