"""Deduplication in the ledger against a real Redis: attach at intake, end together, cancel, promote."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from redis.asyncio import Redis

from config.settings import DedupSettings, Settings, TenantSettings
from scheduler.costs import reports
from scheduler.intake import validate
from scheduler.ledger import dedup, keys
from scheduler.ledger.jobs import NewJob
from scheduler.ledger.ledger import Finish, Ledger, Requeue, day_of
from tests.conftest import make_settings

NOW = 1_800_000_000_000
LANE = "openai:gpt-4o-mini:/v1/chat/completions"
HOOK = "https://hooks.example.com/done"


def dedup_settings(redis_url: str, **dedup_fields: object) -> Settings:
    fields: dict[str, object] = {"enabled": True} | dedup_fields
    return make_settings(
        redis_url,
        tenants={
            "acme": TenantSettings(
                api_key="acme-key",
                webhook_secrets=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
                dedup=DedupSettings(**fields),  # type: ignore[arg-type]
            ),
            "globex": TenantSettings(api_key="globex-key", dedup=DedupSettings(enabled=True)),
        },
    )


def job(
    settings: Settings,
    content: str = "hi",
    *,
    deadline_s: float = 3600,
    tenant: str = "acme",
    now_ms: int = NOW,
    **extra: object,
) -> NewJob:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}
    raw = {"provider": "openai", "body": body, "deadline_in": deadline_s} | extra
    return validate(raw, tenant=tenant, now_ms=now_ms, settings=settings)


def succeeded(job_id: str, *, actual: float = 0.3, sync: float = 0.6) -> Finish:
    return Finish(
        job_id,
        "succeeded",
        "batch",
        result=orjson.dumps({"answer": job_id}),
        usage={"prompt_tokens": 10, "completion_tokens": 5},
        cost={"actual_usd": actual, "sync_equivalent_usd": sync, "saved_usd": sync - actual},
        input_tokens=10,
        output_tokens=5,
        actual_usd=actual,
        sync_usd=sync,
        from_states=("queued", "batched", "sync"),
    )


# -- which requests are identical ---------------------------------------------------------------


def test_key_order_and_spacing_do_not_split_a_group(settings: Settings):
    tuned = dedup_settings(settings.redis_url)
    a = validate(
        {"provider": "openai", "body": {"model": "gpt-4o-mini", "temperature": 0, "messages": []}},
        tenant="acme",
        now_ms=NOW,
        settings=tuned,
    )
    b = validate(
        {"body": {"messages": [], "temperature": 0, "model": "gpt-4o-mini"}, "provider": "openai"},
        tenant="acme",
        now_ms=NOW,
        settings=tuned,
    )
    assert a.dedup_digest
    assert a.dedup_digest == b.dedup_digest


def test_every_body_field_and_the_endpoint_count_but_not_deadline_or_tags(settings: Settings):
    tuned = dedup_settings(settings.redis_url)
    base = job(tuned)
    assert job(tuned, deadline_s=60, tags={"feature": "x"}).dedup_digest == base.dedup_digest
    assert job(tuned, content="other").dedup_digest != base.dedup_digest
    seeded = validate(
        {
            "provider": "openai",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "seed": 1},
        },
        tenant="acme",
        now_ms=NOW,
        settings=tuned,
    )
    assert seeded.dedup_digest != base.dedup_digest
    assert dedup.digest("openai", "m", "/v1/chat/completions", b"{}") != dedup.digest(
        "openai", "m", "/v1/responses", b"{}"
    )


def test_only_opted_in_tenants_and_features_take_part(settings: Settings):
    assert job(settings).dedup_digest == ""  # the default: off
    by_feature = dedup_settings(settings.redis_url, enabled=False, features=["faq"])
    assert job(by_feature, tags={"feature": "faq"}).dedup_digest != ""
    assert job(by_feature, tags={"feature": "chat"}).dedup_digest == ""
    assert job(by_feature).dedup_digest == ""


# -- attaching at intake ------------------------------------------------------------------------


async def test_an_identical_request_attaches_to_the_first_and_enters_no_queue(
    redis: Redis, settings: Settings
):
    tuned = dedup_settings(settings.redis_url)
    ledger = Ledger(redis)
    first, second = job(tuned), job(tuned)
    lead = await ledger.enqueue(first)
    follow = await ledger.enqueue(second)
    assert (lead.status, lead.attached_to) == ("created", None)
    assert (follow.status, follow.attached_to) == ("created", first.id)
    assert await redis.zrange(keys.lane_queue(LANE), 0, -1) == [first.id.encode()]
    assert int(await redis.get(keys.lane_bytes(LANE))) == len(first.body)
    record = await ledger.get(second.id)
    assert record is not None
    assert record.state == "queued"
    assert record.dedup_of == first.id
    assert record.view()["deduplicated_with"] == first.id
    assert await redis.smembers(keys.dedup_followers(first.id)) == {second.id.encode()}
    # Listed as queued, as the producer expects.
    listed, _ = await ledger.list_jobs("acme", status="queued")
    assert {r.id for r in listed} == {first.id, second.id}


async def test_two_concurrent_identical_enqueues_make_one_leader_and_one_follower(
    redis: Redis, settings: Settings
):
    tuned = dedup_settings(settings.redis_url)
    ledgers = [Ledger(Redis.from_url(settings.redis_url)) for _ in range(2)]
    try:
        jobs = [job(tuned), job(tuned)]
        outcomes = await asyncio.gather(*(lg.enqueue(j) for lg, j in zip(ledgers, jobs, strict=True)))
    finally:
        for lg in ledgers:
            await lg.redis.aclose()
    leaders = [o for o in outcomes if o.attached_to is None]
    followers = [o for o in outcomes if o.attached_to is not None]
    assert len(leaders) == 1
    assert len(followers) == 1
    assert followers[0].attached_to == leaders[0].job_id
    assert await redis.zcard(keys.lane_queue(LANE)) == 1


async def test_fifty_identical_jobs_in_one_pipeline_share_one_leader(redis: Redis, settings: Settings):
    tuned = dedup_settings(settings.redis_url)
    outcomes = await Ledger(redis).enqueue_many([job(tuned) for _ in range(50)])
    assert sum(o.attached_to is None for o in outcomes) == 1
    assert await redis.zcard(keys.lane_queue(LANE)) == 1
    assert await redis.scard(keys.dedup_followers(outcomes[0].job_id)) == 49


async def test_a_full_group_makes_the_next_identical_request_lead_a_new_one(redis: Redis, settings: Settings):
    tuned = dedup_settings(settings.redis_url, max_followers=2)
    jobs = [job(tuned) for _ in range(5)]
    outcomes = await Ledger(redis).enqueue_many(jobs)
    assert [o.attached_to for o in outcomes] == [None, jobs[0].id, jobs[0].id, None, jobs[3].id]


async def test_other_tenants_bodies_and_opted_out_jobs_never_attach(redis: Redis, settings: Settings):
    tuned = dedup_settings(settings.redis_url)
    ledger = Ledger(redis)
    outcomes = await ledger.enqueue_many(
        [job(tuned), job(tuned, tenant="globex"), job(tuned, content="other"), job(settings)]
    )
    assert [o.attached_to for o in outcomes] == [None] * 4
    assert await redis.zcard(keys.lane_queue(LANE)) == 4


async def test_the_window_bounds_the_group_index(redis: Redis, settings: Settings):
    tuned = dedup_settings(settings.redis_url, window_s=600)
    first = job(tuned)
    await Ledger(redis).enqueue(first)
    group = keys.dedup_group("acme", first.dedup_digest)
    assert await redis.get(group) == first.id.encode()
    assert 0 < await redis.pttl(group) <= 600_000


async def test_after_the_window_an_identical_request_leads_a_new_group(redis: Redis, settings: Settings):
    tuned = dedup_settings(settings.redis_url, window_s=0.05)
    ledger = Ledger(redis)
    first = job(tuned)
    await ledger.enqueue(first)
    group = keys.dedup_group("acme", first.dedup_digest)
    async with asyncio.timeout(10):  # Redis expires the 50 ms index on its own clock
        while await redis.exists(group):  # noqa: ASYNC110 - waiting for Redis's expiry, not for us
            await asyncio.sleep(0.01)
    later = await ledger.enqueue(job(tuned))
    assert later.attached_to is None
    assert await redis.zcard(keys.lane_queue(LANE)) == 2


async def test_a_request_due_before_the_leader_runs_alone_and_leads_from_then_on(
    redis: Redis, settings: Settings
):
    tuned = dedup_settings(settings.redis_url)
    ledger = Ledger(redis)
    relaxed, urgent, later = (
        job(tuned, deadline_s=3600),
        job(tuned, deadline_s=600),
        job(tuned, deadline_s=1200),
    )
    outcomes = await ledger.enqueue_many([relaxed, urgent, later])
    assert [o.attached_to for o in outcomes] == [None, None, urgent.id]
    assert await redis.zcard(keys.lane_queue(LANE)) == 2
    assert await redis.get(keys.dedup_group("acme", relaxed.dedup_digest)) == urgent.id.encode()


# -- ending together ----------------------------------------------------------------------------


async def test_followers_get_the_leaders_result_webhook_and_an_even_cost_share(
    redis: Redis, settings: Settings
):
    tuned = dedup_settings(settings.redis_url)
    ledger = Ledger(redis)
    group = [job(tuned, callback_url=HOOK) for _ in range(3)]
    await ledger.enqueue_many(group)
    leader, *followers = [j.id for j in group]
    assert await ledger.finish([succeeded(leader, actual=0.3, sync=0.6)], NOW + 1000) == ["ok"]
    for record in await ledger.get_many([leader, *followers]):
        assert record is not None
        assert record.state == "succeeded"
        assert record.route == "batch"
        assert await ledger.result(record.id) == orjson.dumps({"answer": leader})
        assert record.usage == {"prompt_tokens": 10, "completion_tokens": 5}
        assert record.cost is not None
        assert record.cost["actual_usd"] == pytest.approx(0.1)
        assert record.cost["saved_usd"] == pytest.approx(0.5)
        assert record.cost["deduplicated_saved_usd"] == pytest.approx(0.2)
        assert await redis.hget(keys.webhook_delivery(f"wh_{record.id}"), "type") == b"job.succeeded"
    total = await redis.hgetall(keys.agg_total(day_of(NOW + 1000), "acme"))
    assert float(total[b"actual_usd"]) == pytest.approx(0.3)  # one call paid, once
    assert int(total[b"jobs"]) == 3
    assert int(total[b"input_tokens"]) == 10  # tokens the provider processed, once
    assert int(total[b"deduplicated_jobs"]) == 2
    assert float(total[b"deduplicated_saved_usd"]) == pytest.approx(0.6)  # the two calls not made
    lane_saved = await redis.hget(keys.lane_metrics(LANE), "deduplicated_saved_usd")
    assert float(lane_saved) == pytest.approx(0.6)  # batchshift_cost_deduplicated_saved_usd_total
    assert not await redis.exists(keys.dedup_followers(leader))
    assert not await redis.exists(keys.dedup_group("acme", group[0].dedup_digest))


async def test_with_first_the_leader_pays_all(redis: Redis, settings: Settings):
    tuned = dedup_settings(settings.redis_url, cost="first")
    ledger = Ledger(redis)
    group = [job(tuned) for _ in range(3)]
    await ledger.enqueue_many(group)
    await ledger.finish([succeeded(group[0].id, actual=0.3)], NOW + 1000)
    costs = [r.cost for r in await ledger.get_many([j.id for j in group]) if r is not None]
    assert [c["actual_usd"] for c in costs if c] == pytest.approx([0.3, 0.0, 0.0])
    assert [c["deduplicated_saved_usd"] for c in costs if c] == pytest.approx([0.0, 0.3, 0.3])


async def test_the_costs_report_shows_deduplicated_savings(redis: Redis, settings: Settings):
    tuned = dedup_settings(settings.redis_url)
    ledger = Ledger(redis)
    group = [job(tuned) for _ in range(4)]
    await ledger.enqueue_many(group)
    await ledger.finish([succeeded(group[0].id, actual=0.4)], NOW)
    day = reports.parse_day(day_of(NOW), "from")
    report = await reports.report(redis, "tenant", reports.Period(day, day))
    assert report["total"]["deduplicated_jobs"] == 3
    assert report["total"]["deduplicated_saved_usd"] == pytest.approx(1.2)
    assert report["total"]["actual_usd"] == pytest.approx(0.4)


async def test_a_failed_leader_fails_its_followers_with_the_same_error(redis: Redis, settings: Settings):
    tuned = dedup_settings(settings.redis_url)
    ledger = Ledger(redis)
    group = [job(tuned) for _ in range(2)]
    await ledger.enqueue_many(group)
    error = {"type": "invalid_request", "message": "bad"}
    end = Finish(group[0].id, "failed", "batch", from_states=("queued",), error=error)
    assert await ledger.finish([end], NOW) == ["ok"]
    for record in await ledger.get_many([j.id for j in group]):
        assert record is not None
        assert record.state == "failed"
        assert record.error == error


async def test_a_flipped_leader_answers_its_followers_by_sync(redis: Redis, settings: Settings):
    tuned = dedup_settings(settings.redis_url)
    ledger = Ledger(redis)
    group = [job(tuned) for _ in range(2)]
    await ledger.enqueue_many(group)
    assert await ledger.requeue([Requeue(group[0].id, "sync", from_states=("queued",))], NOW) == ["ok"]
    follower = await ledger.get(group[1].id)
    assert follower is not None
    assert follower.state == "queued"  # still waiting on its leader, not flipped on its own
    end = succeeded(group[0].id)
    end.route = "sync"
    await ledger.finish([end], NOW)
    assert [r.route for r in await ledger.get_many([j.id for j in group]) if r] == ["sync", "sync"]


# -- cancelling ---------------------------------------------------------------------------------


async def test_a_follower_cancelled_alone_leaves_the_leader(redis: Redis, settings: Settings):
    tuned = dedup_settings(settings.redis_url)
    ledger = Ledger(redis)
    group = [job(tuned) for _ in range(3)]
    await ledger.enqueue_many(group)
    leader, cancelled, kept = (j.id for j in group)
    await ledger.cancel(cancelled, NOW)
    assert await redis.smembers(keys.dedup_followers(leader)) == {kept.encode()}
    assert await redis.zrange(keys.lane_queue(LANE), 0, -1) == [leader.encode()]
    assert int(await redis.get(keys.lane_bytes(LANE))) == len(group[0].body)
    await ledger.finish([succeeded(leader, actual=0.2)], NOW)
    states = [r.state for r in await ledger.get_many([leader, cancelled, kept]) if r]
    assert states == ["succeeded", "cancelled", "succeeded"]
    kept_record = await ledger.get(kept)
    assert kept_record is not None
    assert kept_record.cost is not None
    assert kept_record.cost["actual_usd"] == pytest.approx(0.1)  # split two ways, not three


async def test_a_cancelled_leader_hands_the_group_to_its_earliest_due_follower(
    redis: Redis, settings: Settings
):
    tuned = dedup_settings(settings.redis_url)
    ledger = Ledger(redis)
    leader, late, early = job(tuned, deadline_s=600), job(tuned, deadline_s=3000), job(tuned, deadline_s=1200)
    await ledger.enqueue_many([leader, late, early])
    await ledger.cancel(leader.id, NOW)
    assert await redis.zrange(keys.lane_queue(LANE), 0, -1, withscores=True) == [
        (early.id.encode(), float(early.deadline_ms))
    ]
    heir = await ledger.get(early.id)
    assert heir is not None
    assert heir.dedup_of is None
    assert heir.state == "queued"
    rest = await ledger.get(late.id)
    assert rest is not None
    assert rest.dedup_of == early.id
    assert await redis.smembers(keys.dedup_followers(early.id)) == {late.id.encode()}
    assert not await redis.exists(keys.dedup_followers(leader.id))
    assert await redis.get(keys.dedup_group("acme", leader.dedup_digest)) == early.id.encode()
    # New identical requests attach to the heir, and the group ends with it.
    newcomer = job(tuned, deadline_s=3600)
    assert (await ledger.enqueue(newcomer)).attached_to == early.id
    await ledger.finish([succeeded(early.id, actual=0.3)], NOW)
    states = {r.id: r.state for r in await ledger.get_many([leader.id, early.id, late.id, newcomer.id]) if r}
    assert states == {
        leader.id: "cancelled",
        early.id: "succeeded",
        late.id: "succeeded",
        newcomer.id: "succeeded",
    }


async def test_a_cancelled_batched_leader_promotes_a_follower_into_the_lane(redis: Redis, settings: Settings):
    """The batch that holds the cancelled leader later discards its answer; the heir goes in a new batch."""
    tuned = dedup_settings(settings.redis_url)
    ledger = Ledger(redis)
    group = [job(tuned) for _ in range(2)]
    await ledger.enqueue_many(group)
    assert (await ledger.transition(group[0].id, ["queued"], "batched", batch_id="b1")).status == "ok"
    await redis.zrem(keys.lane_queue(LANE), group[0].id)
    await ledger.cancel(group[0].id, NOW)
    assert await redis.zrange(keys.lane_queue(LANE), 0, -1) == [group[1].id.encode()]
    late = Finish(group[0].id, "succeeded", "batch", batch_id="b1", result=b"{}", billed=True, actual_usd=0.1)
    assert await ledger.finish([late], NOW) == ["skip:cancelled"]
    heir = await ledger.get(group[1].id)
    assert heir is not None
    assert heir.state == "queued"


async def test_a_cancelled_leader_without_followers_frees_the_group(redis: Redis, settings: Settings):
    tuned = dedup_settings(settings.redis_url)
    ledger = Ledger(redis)
    first = job(tuned)
    await ledger.enqueue(first)
    await ledger.cancel(first.id, NOW)
    assert not await redis.exists(keys.dedup_group("acme", first.dedup_digest))
    assert (await ledger.enqueue(job(tuned))).attached_to is None
