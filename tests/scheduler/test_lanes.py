"""Lane settings: overrides on defaults, caps bounded by the provider, the registry from Redis;
lanes only for catalogued models, a cap per tenant, idle empty lanes pruned."""

from __future__ import annotations

import orjson
import pytest

from config.settings import LaneDefaults, LaneSettings, LimitSettings, ProviderSettings, SchedulerSettings
from scheduler.errors import UnknownProvider
from scheduler.ledger import keys, scripts
from scheduler.ledger.ledger import Ledger, Requeue
from scheduler.planning.lanes import effective, load_lanes, prune, serves
from tests.api.harness import asgi_client, bs_snapshot
from tests.conftest import make_settings
from tests.scheduler.planning_support import new_job


def test_override_on_defaults_and_provider_limits(redis_url: str) -> None:
    settings = make_settings(
        redis_url,
        lane_defaults=LaneDefaults(max_wait=30, max_batch_requests=500),
        lanes={"anthropic:c:/v1/messages": LaneSettings(max_batch_bytes=10**12, cron=["0 3 * * *"])},
        providers={
            "anthropic": ProviderSettings(kind="anthropic", base_url="http://x", max_batch_requests=200),
        },
    )
    ln = effective(settings, "anthropic", "c", "/v1/messages")
    assert ln.max_batch_requests == 200  # provider limit below the default
    assert ln.max_batch_bytes == 256 * 1024 * 1024  # the override is capped by the provider
    assert ln.max_wait_s == 30
    assert ln.cron == ("0 3 * * *",)


def test_unknown_provider(redis_url: str) -> None:
    with pytest.raises(UnknownProvider, match="not configured"):
        effective(make_settings(redis_url), "nope", "m", "/e")


async def test_registry_lists_lanes_with_jobs(redis, settings) -> None:
    ledger = Ledger(redis)
    await ledger.enqueue(new_job("openai", "gpt-a", 0))
    await ledger.enqueue(new_job("anthropic", "claude-b", 0))
    await ledger.enqueue(new_job("ghost", "m", 0))  # a provider no longer configured is left out
    lanes = await load_lanes(redis, settings)
    assert [ln.name for ln in lanes] == [
        "anthropic:claude-b:/v1/messages",
        "openai:gpt-a:/v1/chat/completions",
    ]


# -- the model catalogue, the per-tenant cap, pruning ------------------------------------------

CATALOGUED = {
    "openai": ProviderSettings(kind="openai", base_url="http://x/v1", models=["my-finetune"]),
    "compat": ProviderSettings(kind="openai", base_url="http://y/v1", allow_any_model=True),
}
NOW_MS = 1_800_000_000_000


def test_the_catalogue_is_the_pricing_table_plus_the_providers_models(redis_url: str) -> None:
    settings = make_settings(redis_url, providers=CATALOGUED)
    openai = settings.providers["openai"]
    assert serves(settings, "openai", openai, "gpt-4o-mini")
    assert serves(settings, "openai", openai, "gpt-4o-mini-2024-07-18")  # a dated snapshot
    assert serves(settings, "openai", openai, "my-finetune")
    assert not serves(settings, "openai", openai, "gpt-9-imaginary")
    assert not serves(settings, "openai", openai, "claude-haiku-4-5")  # priced, but for anthropic
    assert serves(settings, "compat", settings.providers["compat"], "meta-llama/Llama-3.3-70B")


async def test_ten_thousand_unknown_models_in_one_bulk_request_are_refused_item_by_item(
    redis, redis_url: str
) -> None:
    settings = make_settings(redis_url, providers=CATALOGUED)
    jobs = [
        {"provider": "openai", "body": {"model": f"no-such-model-{i}", "messages": []}} for i in range(10_000)
    ]
    jobs[5_000] = {"provider": "openai", "body": {"model": "gpt-4o-mini", "messages": []}}
    async with asgi_client(settings, redis) as api:
        before = await bs_snapshot(redis)
        response = await api.post("/v1/jobs/bulk", json={"jobs": jobs})
        assert response.status_code == 200
        results = response.json()["results"]
        assert [r["status"] for r in results].count(422) == 9_999
        assert results[5_000]["status"] == 202
        assert {r["error"]["field"] for r in results if r["status"] == 422} == {"body.model"}
        assert "no-such-model-17" in results[17]["error"]["message"]
    after = await bs_snapshot(redis)
    assert await redis.smembers(keys.LANES) == {b"openai:gpt-4o-mini:/v1/chat/completions"}
    assert len(after) - len(before) < 20  # one job and one lane's keys, not 10,000 lanes


async def test_a_tenant_past_its_lane_cap_is_refused_until_a_lane_goes_idle(redis) -> None:
    ledger = Ledger(redis, max_lanes_per_tenant=2, lane_idle_s=60)

    async def enqueue(model: str, at_ms: int, tenant: str = "acme") -> str:
        return (
            await ledger.enqueue(new_job("openai", model, at_ms + 3_600_000, created_ms=at_ms, tenant=tenant))
        ).status

    assert await enqueue("a", NOW_MS) == "created"
    assert await enqueue("b", NOW_MS + 1) == "created"
    assert await enqueue("c", NOW_MS + 2) == "lanes"  # a third lane
    assert await enqueue("a", NOW_MS + 3) == "created"  # a lane in use is fine
    assert await enqueue("c", NOW_MS + 4, tenant="globex") == "created"  # the cap is per tenant
    assert await redis.zcard(keys.lane_queue("openai:c:/v1/chat/completions")) == 1  # globex's only
    # 60 s after "b" was last used it no longer counts ("a" was used again at +3 ms).
    assert await enqueue("c", NOW_MS + 1 + 60_000) == "created"
    assert await enqueue("d", NOW_MS + 1 + 60_000) == "lanes"


async def test_a_lane_over_the_cap_answers_422_naming_the_model(redis, redis_url: str) -> None:
    settings = make_settings(redis_url, limits=LimitSettings(max_lanes_per_tenant=1))
    async with asgi_client(settings, redis) as api:
        first = await api.post("/v1/jobs", json={"provider": "openai", "body": {"model": "m1"}})
        assert first.status_code == 202
        before = await bs_snapshot(redis)
        second = await api.post("/v1/jobs", json={"provider": "openai", "body": {"model": "m2"}})
        assert second.status_code == 422, second.text
        assert second.json()["error"]["field"] == "body.model"
        assert "max_lanes_per_tenant" in second.json()["error"]["message"]
        assert await bs_snapshot(redis) == before  # nothing stored, no lane made
        bulk = await api.post(
            "/v1/jobs/bulk",
            json={"jobs": [{"provider": "openai", "body": {"model": m}} for m in ("m3", "m1")]},
        )
        assert [r["status"] for r in bulk.json()["results"]] == [422, 202]
    assert not any(b"m2" in key or b"m3" in key for key in await bs_snapshot(redis))


async def test_idle_empty_lanes_are_pruned_and_busy_ones_kept(redis, redis_url: str) -> None:
    settings = make_settings(redis_url, scheduler=SchedulerSettings(lane_idle_s=60))
    ledger = Ledger(redis, lane_idle_s=60)
    names = {m: f"openai:{m}:/v1/chat/completions" for m in ("idle", "queued", "batch", "recent", "sick")}
    for model in names:
        job = new_job("openai", model, NOW_MS + 3_600_000, created_ms=NOW_MS)
        await ledger.enqueue(job)
        if model != "queued":
            await ledger.cancel(job.id, NOW_MS)
    await redis.zadd(keys.LANES_ACTIVE, {names["recent"]: NOW_MS + 30_000})
    await redis.hset(keys.batch("b1"), mapping={"lane": names["batch"], "state": "submitted"})
    await redis.zadd(keys.BATCHES_LIVE, {"b1": NOW_MS})
    await redis.set(keys.lane_slo(names["sick"]), orjson.dumps({"state": "lagging"}))
    assert await prune(redis, settings, NOW_MS + 59_999) == []  # not idle long enough yet
    assert await prune(redis, settings, NOW_MS + 60_000) == [names["idle"]]
    active = {n.decode() for n in await redis.zrange(keys.LANES_ACTIVE, 0, -1)}
    assert active == set(names.values()) - {names["idle"]}
    assert not await redis.sismember(keys.LANES, names["idle"])
    assert not await redis.exists(keys.lane_meta(names["idle"]))
    assert [ln.name for ln in await load_lanes(redis, settings)] == sorted(active)
    # The lane comes back with its next job.
    await ledger.enqueue(new_job("openai", "idle", NOW_MS + 3_600_000, created_ms=NOW_MS + 70_000))
    assert names["idle"] in [ln.name for ln in await load_lanes(redis, settings)]


async def test_pruning_is_guarded_by_the_queue_being_empty_when_it_runs(redis) -> None:
    """Between the tick's reads and the script, a job arrived: the lane stays."""
    ledger = Ledger(redis)
    job = new_job("openai", "raced", NOW_MS + 3_600_000, created_ms=NOW_MS)
    await ledger.enqueue(job)
    script = scripts.load(redis, "prune_lanes")
    assert await script(keys=[keys.LANES_ACTIVE, keys.LANES], args=[NOW_MS, job.lane]) == []
    assert await redis.zscore(keys.LANES_ACTIVE, job.lane) == NOW_MS
    await ledger.cancel(job.id, NOW_MS)
    assert await script(keys=[keys.LANES_ACTIVE, keys.LANES], args=[NOW_MS, job.lane]) == [job.lane.encode()]


async def test_a_job_sent_back_to_a_pruned_lane_revives_it(redis, settings) -> None:
    """A job flipped to sync, its lane pruned meanwhile, then requeued: the tick must see the lane."""
    ledger = Ledger(redis)
    job = new_job("openai", "back", NOW_MS + 3_600_000, created_ms=NOW_MS)
    await ledger.enqueue(job)
    assert await ledger.requeue([Requeue(job.id, "sync", from_states=("queued",))], NOW_MS) == ["ok"]
    script = scripts.load(redis, "prune_lanes")
    assert await script(keys=[keys.LANES_ACTIVE, keys.LANES], args=[NOW_MS, job.lane]) == [job.lane.encode()]
    assert await load_lanes(redis, settings) == []
    assert await ledger.requeue([Requeue(job.id, "lane", from_states=("sync",))], NOW_MS + 5) == ["ok"]
    assert await redis.zscore(keys.LANES_ACTIVE, job.lane) == NOW_MS + 5
    [lane] = await load_lanes(redis, settings)
    assert (lane.name, lane.model) == (job.lane, "back")
