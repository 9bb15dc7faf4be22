"""Cost reports: aggregates kept by the ledger's finish equal the sums of per-job costs."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import pytest
from redis.asyncio import Redis

from config.settings import DEFAULT_PRICING_PATH, Settings
from scheduler.costs import reports as costs
from scheduler.costs.pricing import Pricing, RouteName
from scheduler.errors import InvalidRequest
from scheduler.ledger import ids, keys
from scheduler.ledger.jobs import NewJob
from scheduler.ledger.ledger import Finish, Ledger, Requeue, day_of
from tests.api.harness import asgi_client

NOW = 1_800_000_000_000  # 2027-01-15T08:00:00Z
DAY_MS = 86_400_000
TODAY = datetime.fromtimestamp(NOW / 1000, tz=UTC)
PRICING = Pricing.load(DEFAULT_PRICING_PATH)
MODELS = [
    ("openai", "gpt-4o-mini", "/v1/chat/completions"),
    ("openai", "gpt-4.1", "/v1/chat/completions"),
    ("anthropic", "claude-haiku-4-5", "/v1/messages"),
]


def make_job(
    tenant: str = "acme",
    provider: str = "openai",
    model: str = "gpt-4o-mini",
    endpoint: str = "/v1/chat/completions",
    **kw: Any,
) -> NewJob:
    created = kw.pop("created_ms", NOW)
    return NewJob(
        id=ids.job_id(created),
        tenant=tenant,
        provider=provider,
        endpoint=endpoint,
        model=model,
        body=b'{"messages":[]}',
        deadline_ms=kw.pop("deadline_ms", created + 3_600_000),
        created_ms=created,
        request_hash="h",
        **kw,
    )


def usage_for(provider: str, rng: random.Random) -> dict[str, Any]:
    """A usage object shaped as the emulator (and the providers) return it."""
    if provider == "anthropic":
        return {
            "input_tokens": rng.randint(1, 3000),
            "output_tokens": rng.randint(1, 500),
            "cache_creation_input_tokens": rng.choice([0, 0, 1200]),
            "cache_read_input_tokens": rng.choice([0, 0, 2048]),
            "service_tier": "batch",
        }
    prompt = rng.randint(1, 4000)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": rng.randint(1, 500),
        "total_tokens": 0,
        "prompt_tokens_details": {"cached_tokens": rng.choice([0, 0, (prompt // 128) * 128])},
    }


def period() -> costs.Period:
    return costs.period(None, None, TODAY)


async def test_flipped_job_records_sync_cost_and_duplicate_batch_spend(redis: Redis):
    """A job flipped in flight is paid by sync; its late batch result counts as duplicate spend."""
    ledger = Ledger(redis)
    job = make_job(tags={"feature": "summaries"})
    await ledger.enqueue(job)
    assert (await ledger.transition(job.id, ["queued"], "batched", batch_id="b1")).status == "ok"
    assert await ledger.requeue([Requeue(job.id, "sync", batch_id="b1")], NOW) == ["ok"]
    usage = {"prompt_tokens": 1000, "completion_tokens": 200, "prompt_tokens_details": {"cached_tokens": 0}}
    sync_cost = PRICING.job_cost("openai", "openai", "gpt-4o-mini", "sync", usage)
    done = Finish(
        job.id, "succeeded", "sync", from_states=("sync",), usage=usage, **sync_cost.finish_fields()
    )
    assert await ledger.finish([done], NOW + 1000) == ["ok"]
    batch_cost = PRICING.job_cost("openai", "openai", "gpt-4o-mini", "batch", usage)
    late = Finish(job.id, "succeeded", "batch", batch_id="b1", billed=True, **batch_cost.finish_fields())
    assert await ledger.finish([late], NOW + 2000) == ["skip:succeeded"]

    sync_usd = (1000 * 0.15 + 200 * 0.60) / 1e6
    record = await ledger.get(job.id)
    assert record is not None
    assert record.cost == {
        "actual_usd": pytest.approx(sync_usd),
        "sync_equivalent_usd": pytest.approx(sync_usd),
        "saved_usd": 0.0,
    }
    report = await costs.report(redis, "route", period())
    rows = {row["key"]: row for row in report["groups"]}
    assert rows["sync"]["jobs"] == 1
    assert rows["sync"]["actual_usd"] == pytest.approx(sync_usd)
    assert rows["sync"]["sync_share"] == 1.0
    assert rows["sync"]["saved_pct"] == 0.0
    # The discarded batch result is spend on the batch route, by no finished job.
    assert rows["batch"]["jobs"] == 0
    assert rows["batch"]["duplicate_usd"] == pytest.approx(sync_usd / 2)
    assert report["total"]["duplicate_usd"] == pytest.approx(sync_usd / 2)
    assert report["total"]["sync_share"] == 1.0
    spent = float(await redis.get(keys.budget_spend("acme", day_of(NOW)[:7])))
    assert spent == pytest.approx(sync_usd * 1.5)


async def test_aggregates_equal_sums_of_per_job_costs_after_5000_jobs(redis: Redis):
    ledger = Ledger(redis)
    rng = random.Random(7)
    tenants, features = ["acme", "globex", "initech"], ["summaries", "tagging", "", "search"]
    jobs: list[NewJob] = []
    for i in range(5000):
        provider, model, endpoint = MODELS[i % len(MODELS)]
        feature = features[rng.randrange(len(features))]
        jobs.append(
            make_job(
                tenant=tenants[rng.randrange(3)],
                provider=provider,
                model=model,
                endpoint=endpoint,
                created_ms=NOW - DAY_MS + i,
                tags={"feature": feature} if feature else {},
            )
        )
    for start in range(0, len(jobs), 1000):
        outcomes = await ledger.enqueue_many(jobs[start : start + 1000])
        assert {o.status for o in outcomes} == {"created"}

    expected: dict[str, dict[str, dict[str, float]]] = {
        g: defaultdict(lambda: defaultdict(float)) for g in costs.GROUP_BYS
    }
    items: list[tuple[int, Finish]] = []
    for i, job in enumerate(jobs):
        route: RouteName = rng.choice(["batch", "batch", "batch", "flex", "sync"])
        if job.provider == "anthropic" and route == "flex":
            route = "batch"
        finished_at = NOW - DAY_MS + 1000 if i % 2 else NOW  # two UTC days
        usage = usage_for(job.provider, rng)
        cost = PRICING.job_cost(job.provider, job.provider, job.model, route, usage)
        wasted = 0.0001 if i % 97 == 0 else 0.0
        items.append(
            (
                finished_at,
                Finish(
                    job.id,
                    "succeeded",
                    route,
                    from_states=("queued",),
                    usage=usage,
                    wasted_usd=wasted,
                    **cost.finish_fields(),
                ),
            )
        )
        keys_by = {
            "tenant": job.tenant,
            "feature": job.tags.get("feature") or "-",
            "lane": job.lane,
            "model": job.model,
            "route": route,
            "day": day_of(finished_at),
        }
        assert cost.usage is not None
        assert cost.actual_usd is not None
        assert cost.sync_equivalent_usd is not None
        for group_by, key in keys_by.items():
            sums = expected[group_by][key]
            sums["jobs"] += 1
            sums["input_tokens"] += cost.usage.input_tokens
            sums["output_tokens"] += cost.usage.output_tokens
            sums["actual_usd"] += cost.actual_usd
            sums["sync_equivalent_usd"] += cost.sync_equivalent_usd
            sums["saved_usd"] += cost.sync_equivalent_usd - cost.actual_usd
            sums["wasted_usd"] += wasted
            sums["sync_jobs"] += route == "sync"
            sums["on_time"] += finished_at <= job.deadline_ms

    for at in (NOW - DAY_MS + 1000, NOW):
        chunk = [f for t, f in items if t == at]
        for start in range(0, len(chunk), 500):
            codes = await ledger.finish(chunk[start : start + 500], at)
            assert set(codes) == {"ok"}

    for group_by in costs.GROUP_BYS:
        report = await costs.report(redis, group_by, period())  # type: ignore[arg-type]
        got = {row["key"]: row for row in report["groups"]}
        assert set(got) == set(expected[group_by]), group_by
        for key, sums in expected[group_by].items():
            row = got[key]
            assert row["jobs"] == sums["jobs"]
            assert row["input_tokens"] == sums["input_tokens"]
            assert row["output_tokens"] == sums["output_tokens"]
            for name in ("actual_usd", "sync_equivalent_usd", "saved_usd", "wasted_usd"):
                assert row[name] == pytest.approx(sums[name], rel=1e-9, abs=1e-9), (group_by, key, name)
            assert row["sync_share"] == pytest.approx(sums["sync_jobs"] / sums["jobs"], abs=1e-4)
            assert row["on_time_pct"] == pytest.approx(100 * sums["on_time"] / sums["jobs"], abs=0.01)
        assert report["total"]["jobs"] == 5000
        total_actual = sum(s["actual_usd"] for s in expected["tenant"].values())
        assert report["total"]["actual_usd"] == pytest.approx(total_actual, rel=1e-9)

    one = await costs.report(redis, "feature", period(), ["globex"])
    assert one["total"]["jobs"] == expected["tenant"]["globex"]["jobs"]


def test_period_parses_dates_and_timestamps_and_refuses_nonsense():
    p = costs.period("2027-01-01", "2027-01-03T23:59:59+05:00", TODAY)
    assert p.days() == ["2027-01-01", "2027-01-02", "2027-01-03"]
    default = costs.period(None, None, TODAY)
    assert len(default.days()) == 30
    assert default.end.isoformat() == "2027-01-15"
    for bad in (("2027-02-01", "2027-01-01"), ("yesterday", None), ("2027-01-01T00:00:00", None)):
        with pytest.raises(InvalidRequest):
            costs.period(bad[0], bad[1], TODAY)
    with pytest.raises(InvalidRequest, match="at most"):
        costs.period("2020-01-01", "2027-01-01", TODAY)


async def test_costs_api_scopes_tenant_keys_and_shows_admin_everything(redis: Redis, settings: Settings):
    ledger = Ledger(redis)
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    for tenant in ("acme", "globex"):
        job = make_job(tenant=tenant, created_ms=now_ms)
        await ledger.enqueue(job)
        cost = PRICING.job_cost(
            "openai", "openai", "gpt-4o-mini", "batch", {"prompt_tokens": 100, "completion_tokens": 10}
        )
        await ledger.finish(
            [Finish(job.id, "succeeded", "batch", from_states=("queued",), **cost.finish_fields())], now_ms
        )
    async with asgi_client(settings, redis, headers={}) as client:
        mine = await client.get("/v1/costs?group_by=tenant", headers={"authorization": "Bearer acme-key"})
        assert mine.status_code == 200
        assert [g["key"] for g in mine.json()["groups"]] == ["acme"]
        everyone = await client.get(
            "/v1/costs?group_by=tenant", headers={"authorization": "Bearer admin-key"}
        )
        assert sorted(g["key"] for g in everyone.json()["groups"]) == ["acme", "globex"]
        assert everyone.json()["total"]["jobs"] == 2
        bad = await client.get("/v1/costs?group_by=colour", headers={"authorization": "Bearer admin-key"})
        assert bad.status_code == 422
        assert bad.json()["error"]["field"] == "group_by"
        other = await client.get("/v1/costs?tenant=globex", headers={"authorization": "Bearer acme-key"})
        assert other.status_code == 404
        anonymous = await client.get("/v1/costs")
        assert anonymous.status_code == 401


async def test_one_chunk_mixing_tenants_routes_duplicates_and_whole_dollars_sums_exactly(redis: Redis):
    """finish.lua sums a chunk per key before writing: every aggregate, metric and budget figure
    still equals the per-item sums, with duplicates inside the chunk, wasted spend, and a dollar
    sum that comes out whole after an earlier fractional one (it must still add as a float)."""
    ledger = Ledger(redis)
    first = make_job(tenant="acme", tags={"feature": "a"})
    await ledger.enqueue(first)
    # An earlier chunk leaves fractional dollars in every hash the next chunk touches.
    done = Finish(first.id, "succeeded", "batch", from_states=("queued",), actual_usd=0.25, sync_usd=0.5)
    assert await ledger.finish([done], NOW) == ["ok"]

    plan: list[tuple[str, str, RouteName, float, float, float]] = [
        # tenant, feature, route, actual, sync equivalent, wasted
        ("acme", "a", "batch", 0.75, 1.5, 0.0),
        ("acme", "b", "flex", 1.0, 2.0, 0.5),
        ("globex", "", "sync", 3.0, 3.0, 0.0),
        ("globex", "a", "batch", 0.125, 0.25, 0.375),
    ]
    jobs = [make_job(tenant=t, tags={"feature": f} if f else {}) for t, f, *_ in plan]
    for job in jobs:
        await ledger.enqueue(job)
    chunk = [
        Finish(
            job.id,
            "succeeded",
            route,
            from_states=("queued",),
            input_tokens=10,
            output_tokens=2,
            actual_usd=actual,
            sync_usd=sync,
            wasted_usd=wasted,
            billed=True,
        )
        for job, (_, _, route, actual, sync, wasted) in zip(jobs, plan, strict=True)
    ]
    # The same answer twice in one chunk (a duplicate batch): paid, discarded, counted once as duplicate.
    chunk.append(
        Finish(jobs[0].id, "succeeded", "batch", from_states=("queued",), actual_usd=0.75, billed=True)
    )
    chunk.append(Finish("job_missing", "succeeded", "batch", from_states=("queued",), actual_usd=9.0))
    codes = await ledger.finish(chunk, NOW)
    assert codes == ["ok"] * 4 + ["skip:succeeded", "missing"]

    acme = await costs.report(redis, "route", period(), ["acme"])
    rows = {row["key"]: row for row in acme["groups"]}
    assert rows["batch"]["jobs"] == 2
    assert rows["batch"]["actual_usd"] == 1.0  # 0.25 + 0.75: whole, after a fractional sum
    assert rows["batch"]["duplicate_usd"] == 0.75
    assert rows["flex"]["wasted_usd"] == 0.5
    assert acme["total"]["actual_usd"] == 2.0
    assert acme["total"]["sync_equivalent_usd"] == 4.0
    assert acme["total"]["saved_usd"] == 2.0
    assert acme["total"]["input_tokens"] == 20
    features = await costs.report(redis, "feature", period())
    by_feature = {row["key"]: row for row in features["groups"]}
    assert by_feature["a"]["jobs"] == 3
    assert by_feature["a"]["actual_usd"] == 1.125
    assert by_feature["a"]["duplicate_usd"] == 0.75
    assert by_feature["-"]["actual_usd"] == 3.0
    assert by_feature["b"]["actual_usd"] == 1.0
    assert features["total"]["jobs"] == 5
    assert features["total"]["actual_usd"] == 5.125
    assert features["total"]["wasted_usd"] == 0.875

    month = day_of(NOW)[:7]
    assert float(await redis.get(keys.budget_spend("acme", month))) == 0.25 + 0.75 + 1.0 + 0.5 + 0.75
    assert float(await redis.get(keys.budget_spend("globex", month))) == 3.0 + 0.125 + 0.375
    lane = jobs[0].lane
    raw = await redis.hgetall(keys.lane_metrics(lane))  # type: ignore[misc]
    metrics = {k.decode(): v.decode() for k, v in raw.items()}
    assert float(metrics["actual_usd"]) == 5.125
    assert float(metrics["duplicate_usd"]) == 0.75
    assert float(metrics["wasted_usd"]) == 0.875
    assert int(metrics["jobs:succeeded:batch"]) == 3
    assert int(metrics["e2e:count"]) == 5


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("to=0001-01-01", "from"),  # the default 30 days before it fall off the calendar
        ("from=9999-12-31T23:00:00-05:00", "from"),  # its UTC day is past the last date
        ("to=0001-01-01T00:30:00%2B01:00", "to"),
    ],
)
async def test_days_off_the_calendar_are_422_naming_the_field(
    redis: Redis, settings: Settings, query: str, field: str
):
    async with asgi_client(settings, redis, headers={}) as client:
        answer = await client.get(f"/v1/costs?{query}", headers={"authorization": "Bearer admin-key"})
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == field
