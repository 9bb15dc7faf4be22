"""Flips: at-risk jobs move to the sync lane; a batch whose jobs all flipped is cancelled."""

from __future__ import annotations

from arq.jobs import Job, JobStatus

from config.settings import SloSettings, TenantSettings
from scheduler.costs import budgets
from scheduler.ledger import ids, keys, scripts, tasks
from scheduler.ledger.leader import Leader
from scheduler.ledger.ledger import Finish, Ledger, day_of
from scheduler.planning.batches import Batches, _reserve_keys
from scheduler.planning.lanes import effective
from scheduler.slo.flips import Flipper, ensure_deadline_index
from scheduler.slo.health import read_health
from scheduler.slo.prediction import live_batches, predict_lane
from tests.conftest import make_settings
from tests.scheduler.slo_support import ENDPOINT, LANE, MODEL, PROVIDER, enqueue, lead, submitted_batch

NOW = 1_800_000_000_000


def slo_settings(redis_url, **slo):
    base = {"prior_turnaround_s": 10, "default_sync_latency_s": 1, "sync_retry_allowance": 2}
    return make_settings(
        redis_url,
        slo=SloSettings(**(base | slo)),
        tenants={
            "acme": TenantSettings(api_key="acme-key"),
            "frugal": TenantSettings(api_key="frugal-key", monthly_budget_usd=1, budget_policy="batch_only"),
        },
    )


async def flip(redis, arq_pool, settings, now_ms):
    health = await read_health(redis, settings, LANE, "openai", now_ms)
    live = await live_batches(redis)
    prediction = await predict_lane(redis, settings, health, live.get(LANE, []), now_ms)
    return await Flipper(redis, arq_pool, Ledger(redis), settings).run(prediction, now_ms)


async def test_queued_jobs_that_cannot_make_it_flip(redis, arq_pool, redis_url):
    """Margin 2 s + two 1 s ticks: a 3 s deadline has reached its last safe moment and flips, a
    one-hour deadline waits for its batch."""
    settings = slo_settings(redis_url)
    ledger = Ledger(redis)
    near, far = await enqueue(ledger, NOW, [3, 3600])
    report = await flip(redis, arq_pool, settings, NOW)
    assert report.flipped == [near]
    assert (await ledger.get(near)).state == "sync"
    assert await redis.zscore(keys.SYNC_QUEUE, near) is not None
    assert (await ledger.get(far)).state == "queued"
    assert await redis.zcard(keys.lane_queue(LANE)) == 1


async def test_batch_only_tenant_past_its_budget_does_not_flip(redis, arq_pool, redis_url):
    settings = slo_settings(redis_url)
    ledger = Ledger(redis)
    (held,) = await enqueue(ledger, NOW, [3], tenant="frugal")
    (flipped,) = await enqueue(ledger, NOW, [3])
    await redis.set(keys.budget_spend("frugal", budgets.month_of(NOW)), "5")
    report = await flip(redis, arq_pool, settings, NOW)
    assert report.flipped == [flipped]
    assert report.held == 1
    assert (await ledger.get(held)).state == "queued"


async def test_flips_are_bounded_per_tick(redis, arq_pool, redis_url):
    settings = slo_settings(redis_url, max_flips_per_tick=3)
    ledger = Ledger(redis)
    await enqueue(ledger, NOW, [1, 1.5, 2, 2.5, 3])
    first = await flip(redis, arq_pool, settings, NOW)
    assert len(first.flipped) == 3
    second = await flip(redis, arq_pool, settings, NOW)
    assert len(second.flipped) == 2


async def test_stalled_batch_flips_each_job_at_its_last_safe_moment_and_is_cancelled_once(
    redis, arq_pool, redis_url
):
    """A batch slower than its prior is not doomed: each job waits until its deadline less the margin
    and two ticks, then flips; once every job has flipped, the batch is cancelled."""
    settings = slo_settings(redis_url)
    ledger = Ledger(redis)
    soon, later = await enqueue(ledger, NOW, [60, 90])
    batch_id = await submitted_batch(redis, settings, NOW)
    for at in (2_000, 11_000, 55_000):
        waiting = await flip(redis, arq_pool, settings, NOW + at)
        assert waiting.flipped == []
        assert waiting.cancelled == []
    first = await flip(redis, arq_pool, settings, NOW + 56_500)
    assert first.flipped == [soon]
    assert first.cancelled == []
    assert (await flip(redis, arq_pool, settings, NOW + 85_000)).flipped == []
    stalled = await flip(redis, arq_pool, settings, NOW + 86_500)
    assert stalled.flipped == [later]
    assert stalled.cancelled == [batch_id]
    job_ids = [soon, later]
    job = Job(tasks.cancel_job_id(batch_id), arq_pool)
    assert await job.status() == JobStatus.queued
    again = await flip(redis, arq_pool, settings, NOW + 87_000)
    assert again.flipped == []
    assert again.cancelled == []
    for job_id in job_ids:
        assert (await ledger.get(job_id)).state == "sync"


async def test_late_batch_result_for_a_flipped_job_is_duplicate_spend(redis, arq_pool, redis_url):
    settings = slo_settings(redis_url)
    ledger = Ledger(redis)
    (job_id,) = await enqueue(ledger, NOW, [60])
    batch_id = await submitted_batch(redis, settings, NOW)
    assert (await flip(redis, arq_pool, settings, NOW + 57_000)).flipped == [job_id]
    codes = await ledger.finish(
        [Finish(job_id, "succeeded", "batch", batch_id=batch_id, result=b"{}", actual_usd=0.5, billed=True)],
        NOW + 58_000,
    )
    assert codes == ["skip:sync"]
    job = await ledger.get(job_id)
    assert job.state == "sync"
    day = day_of(NOW + 58_000)
    assert float(await redis.hget(keys.agg_total(day, "acme"), "duplicate_usd")) == 0.5


async def test_intake_routes_a_deadline_no_batch_can_meet_to_sync(redis, redis_url):
    """Fastest recent batch 30 s + sync margin 2 s: a 20 s deadline goes straight to sync at enqueue."""
    from scheduler.costs.admission import AdmissionGate
    from scheduler.ledger.samples import sample
    from scheduler.slo.flips import _intake_health, route_at_enqueue
    from tests.scheduler.slo_support import new_job

    _intake_health.clear()
    settings = slo_settings(redis_url, min_samples=2)
    for seconds in (30.0, 40.0):
        await redis.lpush(keys.lane_turnarounds(LANE), sample(NOW, seconds))
    gate = AdmissionGate(settings, redis)
    near, far, frugal = new_job(NOW, 20), new_job(NOW, 3600), new_job(NOW, 20, tenant="frugal")
    await redis.set(keys.budget_spend("frugal", budgets.month_of(NOW)), "5")
    for job in (near, far, frugal):
        await route_at_enqueue(job, gate)
    assert near.state == "sync"
    assert far.state == "queued"
    assert frugal.state == "queued"  # batch_only and spent: never paid sync
    outcome = await Ledger(redis).enqueue(near)
    assert outcome.status == "created"
    assert await redis.zscore(keys.SYNC_QUEUE, near.id) is not None


async def test_intake_without_history_trusts_batches(redis, redis_url):
    from scheduler.costs.admission import AdmissionGate
    from scheduler.slo.flips import _intake_health, route_at_enqueue
    from tests.scheduler.slo_support import new_job

    _intake_health.clear()
    settings = slo_settings(redis_url)
    job = new_job(NOW, 20)
    await route_at_enqueue(job, AdmissionGate(settings, redis))
    assert job.state == "queued"
    inside_margin = new_job(NOW, 1)
    await route_at_enqueue(inside_margin, AdmissionGate(settings, redis))
    assert inside_margin.state == "sync"


async def test_a_blind_lane_keeps_jobs_on_the_batch_route_until_their_last_safe_moment(
    redis, arq_pool, redis_url
):
    """No history and no prior tighter than the 24 h window: a 1 h deadline is not flipped at once
    (the lane must batch to learn its turnaround); a deadline within the sync margin is."""
    settings = slo_settings(redis_url, prior_turnaround_s=None)
    ledger = Ledger(redis)
    near, far = await enqueue(ledger, NOW, [2, 3600])
    health = await read_health(redis, settings, LANE, "openai", NOW)
    assert health.blind
    report = await flip(redis, arq_pool, settings, NOW)
    assert report.flipped == [near]
    assert (await ledger.get(far)).state == "queued"
    # an hour later, within the margin of its deadline, the far job flips too
    later = await flip(redis, arq_pool, settings, NOW + 3_599_000)
    assert later.flipped == [far]


async def test_a_blind_lane_in_flight_batch_flips_only_near_its_deadlines(redis, arq_pool, redis_url):
    settings = slo_settings(redis_url, prior_turnaround_s=None)
    ledger = Ledger(redis)
    await enqueue(ledger, NOW, [3600])
    batch_id = await submitted_batch(redis, settings, NOW)
    assert (await flip(redis, arq_pool, settings, NOW + 60_000)).flipped == []
    flipped = (await flip(redis, arq_pool, settings, NOW + 3_599_000)).flipped
    assert len(flipped) == 1
    assert (await ledger.get(flipped[0])).batch_id == batch_id


async def test_jobs_of_a_batch_stuck_planned_flip_before_their_deadline(redis, arq_pool, redis_url):
    """A batch whose submission keeps failing (provider 5xx on create) stays ``planned`` for minutes
    while its submit task retries and reconciliation waits; its jobs must still flip in time. Its
    submission then leaves the flipped jobs out; nothing cancels a batch that never reached the provider."""
    settings = slo_settings(redis_url)
    ledger = Ledger(redis)
    near, far = await enqueue(ledger, NOW, [60, 3600])
    token = await Leader(redis, holder="test", ttl_s=30).ensure()
    batch_id = ids.batch_id(NOW)
    lane = effective(settings, PROVIDER, MODEL, ENDPOINT)
    assert await Batches(redis).reserve(lane, batch_id, token=token, now_ms=NOW, chunk=1000) == 2
    assert (await flip(redis, arq_pool, settings, NOW + 1_000)).flipped == []
    assert (await flip(redis, arq_pool, settings, NOW + 50_000)).flipped == []
    # 57 s later the batch is still planned: the near job's last safe moment has come.
    stuck = await flip(redis, arq_pool, settings, NOW + 57_000)
    assert stuck.flipped == [near]
    assert stuck.cancelled == []
    job = await ledger.get(near)
    assert job.state == "sync"
    assert (await ledger.get(far)).state == "batched"


async def test_jobs_of_an_ended_batch_whose_ingestion_lags_flip_just_in_time(redis, arq_pool, redis_url):
    """Results not yet in the ledger (a download failing, say): wait for them until only the sync
    margin is left, then flip; a job with time to spare stays with its batch."""
    settings = slo_settings(redis_url)
    ledger = Ledger(redis)
    near, far = await enqueue(ledger, NOW, [30, 3600])
    batch_id = await submitted_batch(redis, settings, NOW)
    await redis.hset(keys.batch(batch_id), mapping={"state": "ended", "ended_ms": NOW + 5_000})
    assert (await flip(redis, arq_pool, settings, NOW + 10_000)).flipped == []
    late = await flip(redis, arq_pool, settings, NOW + 28_000)
    assert late.flipped == [near]
    assert (await ledger.get(far)).state == "batched"


async def test_a_batch_whose_jobs_were_all_cancelled_by_their_producer_is_cancelled(
    redis, arq_pool, redis_url
):
    """Nothing in the batch is wanted any more: stop paying for it at the provider."""
    settings = slo_settings(redis_url)
    ledger = Ledger(redis)
    first, second = await enqueue(ledger, NOW, [3600, 3600])
    batch_id = await submitted_batch(redis, settings, NOW)
    await ledger.cancel(first, NOW + 500)  # before the tracker built the batch's deadline index
    kept = await flip(redis, arq_pool, settings, NOW + 1_000)
    assert kept.cancelled == []  # one job still waits on the batch
    await ledger.cancel(second, NOW + 1_500)  # after it did
    emptied = await flip(redis, arq_pool, settings, NOW + 2_000)
    assert emptied.flipped == []
    assert emptied.cancelled == [batch_id]
    assert await Job(tasks.cancel_job_id(batch_id), arq_pool).status() == JobStatus.queued


async def test_a_batch_slower_than_any_seen_waits_and_a_stalled_one_flips_in_time(redis, arq_pool, redis_url):
    """History of 4–6 s batches; a batch in flight for 9 s whose jobs are due in 300 s: nothing flips.
    The same batch stalled: every job flips at its last safe moment, early enough that the sync lane
    (60 a minute) serves them all, in deadline order, by their deadlines."""
    from scheduler.ledger.samples import sample

    base = slo_settings(redis_url, prior_turnaround_s=None, min_samples=5)
    provider = base.providers["openai"].model_copy(update={"sync_rpm": 60, "sync_concurrency": 4})
    settings = base.model_copy(update={"providers": {"openai": provider}})
    for seconds in (4.0, 4.5, 5.0, 5.5, 6.0):
        await redis.lpush(keys.lane_turnarounds(LANE), sample(NOW, seconds))
    ledger = Ledger(redis)
    job_ids = await enqueue(ledger, NOW, [300 + i * 0.1 for i in range(100)])
    deadlines = {j: NOW + 300_000 + i * 100 for i, j in enumerate(job_ids)}
    await submitted_batch(redis, settings, NOW)
    assert (await flip(redis, arq_pool, settings, NOW + 9_000)).flipped == []
    flipped_at: dict[str, int] = {}
    for now in range(NOW + 10_000, NOW + 300_000, 1_000):
        for job_id in (await flip(redis, arq_pool, settings, now)).flipped:
            flipped_at[job_id] = now
    assert sorted(flipped_at) == sorted(job_ids)
    assert min(flipped_at.values()) > NOW + 150_000  # not at the first sign of slowness
    # The sync lane serves one a second (sync_rpm 60), earliest deadline first, each call 1 s.
    free_ms = 0
    for job_id in sorted(job_ids, key=deadlines.__getitem__):
        start = max(flipped_at[job_id], free_ms)
        free_ms = start + 1_000
        assert start + 1_000 <= deadlines[job_id]


async def test_reserving_writes_the_batchs_deadline_index(redis, redis_url):
    """Both reservation scripts index what they take by deadline, with the index's expiry, so the
    tracker's first sight of the batch reads no job record; a job they skip is not indexed."""
    settings = slo_settings(redis_url)
    ledger = Ledger(redis)
    jobs = await enqueue(ledger, NOW, [7200, 60, 3600])
    batch_id = await submitted_batch(redis, settings, NOW)
    index = keys.batch_deadlines(batch_id)
    deadlines = sorted((NOW + s * 1000, j) for j, s in zip(jobs, [7200, 60, 3600], strict=True))
    assert await redis.zrange(index, 0, -1, withscores=True) == [(j.encode(), float(d)) for d, j in deadlines]
    assert 0 < await redis.ttl(index) <= keys.BATCH_DEADLINES_TTL_S

    chosen, other = await enqueue(ledger, NOW, [600, 900])
    await ledger.cancel(other, NOW)
    lane = effective(settings, PROVIDER, MODEL, ENDPOINT)
    second = ids.batch_id(NOW)
    reply = await scripts.load(redis, "reserve_jobs")(
        keys=_reserve_keys(lane.name, second),
        args=[
            await lead(redis),
            second,
            100,
            10**9,
            0,
            NOW,
            lane.name,
            PROVIDER,
            MODEL,
            ENDPOINT,
            other,
            chosen,
        ],
    )
    assert int(reply[1]) == 1
    assert await redis.zrange(keys.batch_deadlines(second), 0, -1, withscores=True) == [
        (chosen.encode(), float(NOW + 600_000))
    ]


async def test_a_batch_without_an_index_gets_one_from_its_jobs_still_waiting(redis, redis_url):
    """A batch whose index is missing (reserved before reservation wrote it) has it built on first
    sight, from the records: only jobs still batched in it, scored by deadline."""
    settings = slo_settings(redis_url)
    ledger = Ledger(redis)
    kept, gone = await enqueue(ledger, NOW, [3600, 1800])
    batch_id = await submitted_batch(redis, settings, NOW)
    index = keys.batch_deadlines(batch_id)
    await redis.delete(index)
    await ledger.cancel(gone, NOW + 1)
    assert await ensure_deadline_index(redis, batch_id) == index
    assert await redis.zrange(index, 0, -1, withscores=True) == [(kept.encode(), float(NOW + 3_600_000))]
    assert 0 < await redis.ttl(index) <= keys.BATCH_DEADLINES_TTL_S
