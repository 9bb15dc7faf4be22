"""Prefix-aware grouping end to end: the same workload through a grouping lane and a plain lane.

Real Redis, the emulator over HTTP with its prompt-caching model (:mod:`emulator.prompt_cache`),
the scheduler's tick and an arq worker on one virtual clock (the SLO pipeline's harness, shared by
name). Jobs are validated by intake (which computes their prefix keys) and stored by the ledger.
Two provider accounts of one OpenAI model on the same emulator make two lanes that differ only in
``group_prefixes``, so both run in the same pipeline over the same time.
"""

from __future__ import annotations

import random

import orjson
import pytest

from config.settings import LaneDefaults, LaneSettings, ProviderSettings, SchedulerSettings, Settings
from scheduler import intake
from scheduler.ledger.jobs import lane_name
from tests import test_slo_e2e as slo
from tests.api.harness import ADMIN, asgi_client
from tests.conftest import make_settings
from tests.test_slo_e2e import FAST_HTTP, Pipeline, all_terminal, records

pytestmark = pytest.mark.timeout(900)

emulator_url = slo.emulator_url
emulator = slo.emulator
harness = slo.harness

MODEL = "gpt-4.1-mini"
ENDPOINT = "/v1/chat/completions"
GROUPS = 20
JOBS = 2_000
PREFIX_TOKENS = 4_000  # the emulator counts a token per 4 bytes
DEADLINE_S = 3_600.0


def settings(redis_url: str, emulator_url: str) -> Settings:
    account = {"kind": "openai", "base_url": f"{emulator_url}/v1", "api_key": "sk-test", "http": FAST_HTTP}
    return make_settings(
        redis_url,
        providers={"grouped": ProviderSettings(**account), "plain": ProviderSettings(**account)},
        lane_defaults=LaneDefaults(max_wait=0.1, max_batch_requests=500),
        lanes={lane_name("plain", MODEL, ENDPOINT): LaneSettings(group_prefixes=False)},
        scheduler=SchedulerSettings(
            tick_interval_s=0.1, poll_initial_s=0.1, poll_max_s=0.2, poll_backoff=1, lease_ttl_s=10
        ),
    )


def workload() -> list[dict[str, object]]:
    """2,000 requests in 20 groups sharing a 4,000-token system prompt, in a shuffled arrival order."""
    requests = []
    for i in range(JOBS):
        group = i % GROUPS
        opening = f"Reference document {group}: "
        system = (opening + "the quarterly figures and their notes. " * PREFIX_TOKENS)[: PREFIX_TOKENS * 4]
        requests.append(
            {
                "model": MODEL,
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": f"Question {i} about the document."},
                ],
            }
        )
    random.Random(20).shuffle(requests)
    return requests


async def enqueue(pipeline: Pipeline, conf: Settings, provider: str) -> list[str]:
    jobs = [
        intake.validate(
            {"provider": provider, "body": body, "deadline_in": DEADLINE_S, "tags": {"feature": "reports"}},
            tenant="acme",
            now_ms=pipeline.clock.ms,
            settings=conf,
        )
        for body in workload()
    ]
    outcomes = await pipeline.ledger.enqueue_many(jobs)
    assert {o.status for o in outcomes} == {"created"}
    return [o.job_id for o in outcomes]


async def test_grouping_prefixes_costs_at_least_30_percent_less(redis_url, emulator, harness) -> None:
    conf = settings(redis_url, emulator.url)
    pipeline = harness(conf)
    grouped = await enqueue(pipeline, conf, "grouped")
    plain = await enqueue(pipeline, conf, "plain")
    prefixes = {r.raw.get("prefix") for r in await records(pipeline.ledger, grouped[:200])}
    assert len(prefixes) == GROUPS  # intake keyed every job by its group's prompt prefix

    await pipeline.run_until(all_terminal(pipeline.ledger, grouped + plain), within_s=120)

    costs: dict[str, float] = {}
    cached: dict[str, int] = {}
    for name, job_ids in (("grouped", grouped), ("plain", plain)):
        jobs = await records(pipeline.ledger, job_ids)
        assert {(j.state, j.route) for j in jobs} == {("succeeded", "batch")}
        assert all(j.completed_ms is not None and j.completed_ms <= j.deadline_ms for j in jobs)
        costs[name] = sum(j.cost["actual_usd"] for j in jobs if j.cost)
        cached[name] = sum(
            (j.usage or {}).get("prompt_tokens_details", {}).get("cached_tokens", 0)
            if "prompt_tokens_details" in (j.usage or {})
            else (j.usage or {}).get("cache_read_tokens", 0)
            for j in jobs
        )
    saving = 1 - costs["grouped"] / costs["plain"]
    print(  # quoted in the closing note: run with -s to see it
        f"\n{JOBS} jobs, {GROUPS} prefix groups of {PREFIX_TOKENS} tokens: "
        f"grouped ${costs['grouped']:.4f}, ungrouped ${costs['plain']:.4f}, saving {saving:.1%}; "
        f"cached tokens {cached['grouped']} vs {cached['plain']}; "
        f"{orjson.dumps(await _batches(pipeline)).decode()}"
    )
    assert saving >= 0.30
    # Each batch held whole groups, adjacent: one cold read per group in the whole run.
    assert cached["grouped"] == (JOBS - GROUPS) * (PREFIX_TOKENS // 128 * 128)

    # The cache share is reported per lane (/v1/costs and /v1/lanes) and per feature.
    async with asgi_client(conf, pipeline.scheduler.redis, ADMIN) as client:
        by_lane = (await client.get("/v1/costs", params={"group_by": "lane"})).json()
        by_feature = (await client.get("/v1/costs", params={"group_by": "feature"})).json()
        lanes = (await client.get("/v1/lanes")).json()["data"]
    rows = {row["key"].split(":")[0]: row for row in by_lane["groups"]}
    for name in ("grouped", "plain"):
        assert rows[name]["cached_input_tokens"] == cached[name]
        assert rows[name]["cache_share"] == round(cached[name] / rows[name]["input_tokens"], 4)
    shares = {view["lane"].split(":")[0]: view["cache_share"] for view in lanes}
    assert shares == {name: rows[name]["cache_share"] for name in ("grouped", "plain")}
    assert [(r["key"], r["cached_input_tokens"]) for r in by_feature["groups"]] == [
        ("reports", cached["grouped"] + cached["plain"])
    ]


async def _batches(pipeline: Pipeline) -> dict[str, int]:
    """How many batches each lane made."""
    counts: dict[str, int] = {}
    redis = pipeline.scheduler.redis
    async for key in redis.scan_iter(match="bs:batch:*", count=1000):
        if key.count(b":") == 2:
            lane = (await redis.hget(key, "lane") or b"").decode()
            counts[lane] = counts.get(lane, 0) + 1
    return counts


ANTHROPIC_MODEL = "claude-haiku-4-5"
WAVE_GROUPS = 5
WAVE_JOBS = 25  # per lane and wave: five jobs in each of five groups
WAVE_GAP_S = 600.0  # past Anthropic's default five-minute cache TTL, within the hour


def anthropic_settings(redis_url: str, emulator_url: str) -> Settings:
    account = {"kind": "anthropic", "base_url": emulator_url, "http": FAST_HTTP}
    return make_settings(
        redis_url,
        # Two accounts (API keys): the emulator keeps a prompt cache per key, as Anthropic per organisation.
        providers={
            "grouped": ProviderSettings(**account, api_key="sk-ant-grouped"),
            "plain": ProviderSettings(**account, api_key="sk-ant-plain"),
        },
        lane_defaults=LaneDefaults(max_wait=0.1),
        lanes={lane_name("plain", ANTHROPIC_MODEL, "/v1/messages"): LaneSettings(group_prefixes=False)},
        scheduler=SchedulerSettings(
            tick_interval_s=0.1, poll_initial_s=0.1, poll_max_s=0.2, poll_backoff=1, lease_ttl_s=10
        ),
    )


async def wave(pipeline: Pipeline, conf: Settings, wave_number: int) -> dict[str, list[str]]:
    """Each lane gets the same jobs: a cache breakpoint after a 4,000-token document per group."""
    out: dict[str, list[str]] = {}
    for provider in ("grouped", "plain"):
        jobs = []
        for i in range(WAVE_JOBS):
            document = f"Contract {i % WAVE_GROUPS}: " + "clause and counter-clause. " * PREFIX_TOKENS
            body = {
                "model": ANTHROPIC_MODEL,
                "max_tokens": 32,
                "system": [
                    {
                        "type": "text",
                        "text": document[: PREFIX_TOKENS * 4],
                        "cache_control": {"type": "ephemeral"},
                    }
                ],
                "messages": [{"role": "user", "content": f"Wave {wave_number}, question {i}."}],
            }
            jobs.append(
                intake.validate(
                    {"provider": provider, "body": body, "deadline_in": DEADLINE_S},
                    tenant="acme",
                    now_ms=pipeline.clock.ms,
                    settings=conf,
                )
            )
        outcomes = await pipeline.ledger.enqueue_many(jobs)
        out[provider] = [o.job_id for o in outcomes]
    return out


async def test_anthropic_one_hour_ttl_carries_the_cache_across_batches(redis_url, emulator, harness) -> None:
    """Two waves ten minutes apart: the grouping lane's one-hour entries are still warm for the
    second, the plain lane's five-minute ones are written again."""
    conf = anthropic_settings(redis_url, emulator.url)
    pipeline = harness(conf)
    first = await wave(pipeline, conf, 1)
    await pipeline.run_until(all_terminal(pipeline.ledger, first["grouped"] + first["plain"]), within_s=30)
    pipeline.clock.advance(WAVE_GAP_S)
    emulator.set_clock(pipeline.clock.seconds)
    second = await wave(pipeline, conf, 2)
    await pipeline.run_until(all_terminal(pipeline.ledger, second["grouped"] + second["plain"]), within_s=30)

    figures: dict[str, dict[str, float]] = {}
    for name in ("grouped", "plain"):
        jobs = await records(pipeline.ledger, first[name] + second[name])
        assert {(j.state, j.route) for j in jobs} == {("succeeded", "batch")}
        assert all(j.completed_ms is not None and j.completed_ms <= j.deadline_ms for j in jobs)
        usage = [j.usage or {} for j in jobs]
        figures[name] = {
            "usd": sum(j.cost["actual_usd"] for j in jobs if j.cost),
            "written": sum(u.get("cache_creation_input_tokens", 0) for u in usage),
            "read": sum(u.get("cache_read_input_tokens", 0) for u in usage),
        }
    print(f"\nAnthropic, two waves {WAVE_GAP_S:.0f} s apart: {figures}")
    # Grouped: each group written once (one hour); plain: once a wave (five minutes).
    assert figures["grouped"]["written"] == WAVE_GROUPS * PREFIX_TOKENS
    assert figures["plain"]["written"] == 2 * WAVE_GROUPS * PREFIX_TOKENS
    assert figures["grouped"]["read"] == (2 * WAVE_JOBS - WAVE_GROUPS) * PREFIX_TOKENS
    assert figures["grouped"]["usd"] < figures["plain"]["usd"]
