"""Budgets: the monthly envelope under each policy, and the per-job cost ceiling."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from config.settings import DEFAULT_PRICING_PATH, Settings, TenantSettings
from scheduler.costs import budgets
from scheduler.costs.pricing import Pricing
from scheduler.errors import BudgetExceeded, InvalidRequest
from scheduler.ledger import ids, keys
from scheduler.ledger.jobs import NewJob
from scheduler.ledger.ledger import Finish, Ledger
from tests.api.harness import asgi_client
from tests.conftest import make_settings

NOW = 1_800_000_000_000  # 2027-01-15T08:00:00Z
PRICING = Pricing.load(DEFAULT_PRICING_PATH)


def budgeted(redis_url: str, policy: str, budget: float = 0.001, **extra: object) -> Settings:
    return make_settings(
        redis_url,
        tenants={
            "acme": TenantSettings(
                api_key="acme-key", monthly_budget_usd=budget, budget_policy=policy, **extra
            ),
            "globex": TenantSettings(api_key="globex-key"),
        },
    )


async def spend(redis: Redis, tenant: str, now_ms: int, prompt_tokens: int) -> float:
    """Finish one job through the ledger (gpt-4o-mini, sync route); returns its cost."""
    ledger = Ledger(redis)
    job = NewJob(
        id=ids.job_id(now_ms),
        tenant=tenant,
        provider="openai",
        endpoint="/v1/chat/completions",
        model="gpt-4o-mini",
        body=b"{}",
        deadline_ms=now_ms + 60_000,
        created_ms=now_ms,
    )
    await ledger.enqueue(job)
    cost = PRICING.job_cost("openai", "openai", "gpt-4o-mini", "sync", {"prompt_tokens": prompt_tokens})
    assert await ledger.finish(
        [Finish(job.id, "succeeded", "sync", from_states=("queued",), **cost.finish_fields())], now_ms
    ) == ["ok"]
    assert cost.actual_usd is not None
    return cost.actual_usd


def test_envelope_resets_on_the_first_of_next_month_utc():
    assert budgets.month_of(NOW) == "2027-01"
    assert budgets.resets_at("2027-01") == datetime(2027, 2, 1, tzinfo=UTC)
    assert budgets.resets_at("2027-12") == datetime(2028, 1, 1, tzinfo=UTC)


async def test_reject_policy_refuses_new_jobs_once_spent(redis: Redis, redis_url: str):
    settings = budgeted(redis_url, "reject", budget=0.001)
    await spend(redis, "acme", NOW, 4000)  # $0.0006
    await budgets.check_intake(redis, settings, "acme", NOW)
    await spend(redis, "acme", NOW, 4000)  # $0.0012 in all: over $0.001
    with pytest.raises(BudgetExceeded) as caught:
        await budgets.check_intake(redis, settings, "acme", NOW)
    assert caught.value.status_code == 402
    assert "$0.00" in str(caught.value)
    assert "2027-02-01T00:00:00Z" in str(caught.value)
    assert await budgets.allows_sync(redis, settings, "acme", NOW)  # reject never blocks flips
    await budgets.check_intake(redis, settings, "globex", NOW)  # no envelope
    next_month = NOW + 20 * 86_400_000
    await budgets.check_intake(redis, settings, "acme", next_month)  # a new month, a new envelope


async def test_batch_only_policy_accepts_jobs_but_blocks_paid_sync(redis: Redis, redis_url: str):
    settings = budgeted(redis_url, "batch_only", budget=0.0005)
    assert await budgets.allows_sync(redis, settings, "acme", NOW)
    await spend(redis, "acme", NOW, 4000)
    await budgets.check_intake(redis, settings, "acme", NOW)
    assert not await budgets.allows_sync(redis, settings, "acme", NOW)
    assert await budgets.sync_blocked(redis, settings, ["acme", "globex", "acme"], NOW) == {"acme"}
    state = await budgets.state(redis, settings, "acme", NOW)
    assert state.exhausted
    assert state.remaining_usd == 0
    assert state.policy == "batch_only"


async def test_spend_counts_duplicate_and_wasted_billing(redis: Redis, redis_url: str):
    ledger = Ledger(redis)
    job = NewJob(
        id=ids.job_id(NOW), tenant="acme", provider="openai", endpoint="/v1/chat/completions",
        model="gpt-4o-mini", body=b"{}", deadline_ms=NOW + 60_000, created_ms=NOW,
    )  # fmt: skip
    await ledger.enqueue(job)
    await ledger.finish([Finish(job.id, "failed", "sync", from_states=("queued",), wasted_usd=0.25)], NOW)
    await ledger.finish([Finish(job.id, "succeeded", "batch", billed=True, actual_usd=0.5)], NOW)
    assert await budgets.spent_usd(redis, "acme", "2027-01") == pytest.approx(0.75)
    assert float(await redis.get(keys.budget_spend("acme", "2027-01"))) == pytest.approx(0.75)


def terms(route: str = "batch", body: dict[str, Any] | None = None, body_bytes: int = 4000, **over: Any):
    fields: dict[str, Any] = {"provider": "openai", "kind": "openai", "model": "gpt-4.1",
                              "endpoint": "/v1/chat/completions", "route": route,
                              "body": {"model": "gpt-4.1", "max_tokens": 2000} if body is None else body,
                              "body_bytes": body_bytes}  # fmt: skip
    return budgets.CostTerms(**{**fields, **over})


def test_job_ceiling_estimates_from_max_tokens_at_the_batch_price(redis_url: str):
    settings = budgeted(redis_url, "reject", budget=100, max_job_cost_usd=0.01)
    estimate = budgets.estimate_usd(PRICING, terms())
    assert estimate == pytest.approx((1000 * 2.0 + 2000 * 8.0) / 2 / 1e6)  # $0.009
    budgets.check_job_ceiling(settings, PRICING, "acme", terms())
    with pytest.raises(InvalidRequest, match="ceiling") as caught:
        budgets.check_job_ceiling(settings, PRICING, "acme", terms("sync"))
    assert caught.value.field == "max_tokens"
    assert caught.value.status_code == 422
    with pytest.raises(InvalidRequest, match="set max_tokens"):
        budgets.check_job_ceiling(settings, PRICING, "acme", terms(body={}, body_bytes=10))
    # Embeddings generate nothing; an unpriced model is let through.
    embedding = terms(body={}, body_bytes=100, endpoint="/v1/embeddings", model="text-embedding-3-small")
    budgets.check_job_ceiling(settings, PRICING, "acme", embedding)
    budgets.check_job_ceiling(settings, PRICING, "acme", terms(body={"max_tokens": 10**9}, model="mystery"))


async def test_intake_answers_402_for_a_spent_envelope_and_422_over_the_ceiling(redis: Redis, redis_url: str):
    settings = budgeted(redis_url, "reject", budget=0.001, max_job_cost_usd=0.001)
    job: dict[str, Any] = {
        "provider": "openai",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50},
    }
    auth = {"authorization": "Bearer acme-key"}
    async with asgi_client(settings, redis, headers={}) as client:
        assert (await client.post("/v1/jobs", json=job, headers=auth)).status_code in (200, 201, 202)
        big = {**job, "body": {**job["body"], "max_tokens": 100_000}}
        refused = await client.post("/v1/jobs", json=big, headers=auth)
        assert refused.status_code == 422
        assert refused.json()["error"]["field"] == "max_tokens"
        now = int(datetime.now(UTC).timestamp() * 1000)
        await spend(redis, "acme", now, 8000)
        spent = await client.post("/v1/jobs", json=job, headers=auth)
        assert spent.status_code == 402
        assert spent.json()["error"]["type"] == "budget_exceeded"
        assert "resets at" in spent.json()["error"]["message"]
        state = await client.get("/v1/budget", headers=auth)
        assert state.status_code == 200
        assert state.json()["exhausted"] is True
        assert state.json()["budget_usd"] == 0.001
        assert state.json()["resets_at"] == budgets._iso(budgets.resets_at(budgets.month_of(now)))
        everyone = await client.get("/v1/budget", headers={"authorization": "Bearer admin-key"})
        assert [b["tenant"] for b in everyone.json()["budgets"]] == ["acme", "globex"]
        assert (
            await client.post("/v1/jobs", json=job, headers={"authorization": "Bearer globex-key"})
        ).status_code < 300


# -- committed spend: the envelope holds against one bulk request -------------------------------

CAPPED_BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000}
AUTH = {"authorization": "Bearer acme-key"}


def expected_usd(route: str, body: dict[str, Any] = CAPPED_BODY) -> float:
    size = len(orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
    return budgets.reservation(PRICING, terms(route, body, size, model="gpt-4o-mini"))


async def committed(redis: Redis, now_ms: int) -> float:
    return float(await redis.get(keys.budget_committed("acme", budgets.month_of(now_ms))) or 0)


async def test_a_nearly_spent_reject_budget_cannot_be_passed_in_one_bulk_request(
    redis: Redis, redis_url: str
):
    now = int(datetime.now(UTC).timestamp() * 1000)
    per_job = expected_usd("batch")
    billed = await spend(redis, "acme", now, 8000)
    settings = budgeted(redis_url, "reject", budget=billed + 3.5 * per_job)  # room for three jobs
    async with asgi_client(settings, redis, headers={}) as client:
        response = await client.post(
            "/v1/jobs/bulk", json={"jobs": [{"provider": "openai", "body": CAPPED_BODY}] * 50}, headers=AUTH
        )
    statuses = [entry["status"] for entry in response.json()["results"]]
    assert statuses == [202] * 3 + [402] * 47
    assert {e["error"]["type"] for e in response.json()["results"][3:]} == {"budget_exceeded"}
    assert await committed(redis, now) == pytest.approx(3 * per_job)
    view = (await budgets.state(redis, settings, "acme", now)).as_dict()
    assert view["committed_usd"] == pytest.approx(3 * per_job, abs=1e-6)
    assert await redis.zcard(keys.tenant_jobs("acme")) == 1 + 3  # the billed job and three queued


async def test_a_reservation_is_released_when_its_job_ends(redis: Redis, redis_url: str):
    now = int(datetime.now(UTC).timestamp() * 1000)
    settings = budgeted(redis_url, "reject", budget=1.0)
    async with asgi_client(settings, redis, headers={}) as client:
        response = await client.post(
            "/v1/jobs/bulk", json={"jobs": [{"provider": "openai", "body": CAPPED_BODY}] * 2}, headers=AUTH
        )
    first, second = (entry["job"]["id"] for entry in response.json()["results"])
    assert await committed(redis, now) == pytest.approx(2 * expected_usd("batch"))
    ledger = Ledger(redis)
    cost = PRICING.job_cost(
        "openai", "openai", "gpt-4o-mini", "batch", {"prompt_tokens": 10, "completion_tokens": 5}
    )
    assert await ledger.finish(
        [Finish(first, "succeeded", "batch", from_states=("queued",), **cost.finish_fields())], now
    ) == ["ok"]
    assert await committed(redis, now) == pytest.approx(expected_usd("batch"))
    await ledger.cancel(second, now)
    assert await committed(redis, now) == pytest.approx(0.0, abs=1e-12)
    assert await budgets.spent_usd(redis, "acme", budgets.month_of(now)) == pytest.approx(cost.actual_usd)
    # Ending twice releases nothing more.
    assert await ledger.finish(
        [Finish(first, "succeeded", "batch", from_states=("queued",), **cost.finish_fields())], now
    ) == ["skip:succeeded"]
    assert await committed(redis, now) == pytest.approx(0.0, abs=1e-12)


async def test_admission_prices_a_job_at_the_route_it_will_take(redis: Redis, redis_url: str):
    """A deadline no batch can meet sends the job straight to sync: its ceiling is checked at twice the price."""
    ceiling = (expected_usd("batch") + expected_usd("sync")) / 2
    settings = budgeted(redis_url, "reject", budget=1.0, max_job_cost_usd=ceiling)
    job = {"provider": "openai", "body": CAPPED_BODY}
    async with asgi_client(settings, redis, headers={}) as client:
        batched = await client.post("/v1/jobs", json={**job, "deadline_in": 86_400}, headers=AUTH)
        assert batched.status_code == 202, batched.text
        assert batched.json()["status"] == "queued"
        urgent = await client.post("/v1/jobs", json={**job, "deadline_in": 5}, headers=AUTH)
        assert urgent.status_code == 422, urgent.text
        assert urgent.json()["error"]["field"] == "max_tokens"
        assert "sync price" in urgent.json()["error"]["message"]
