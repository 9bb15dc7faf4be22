"""A grouping lane's batch input: prefix groups adjacent, bodies with the provider's cache hints;
a plain lane's bodies go byte for byte."""

from __future__ import annotations

import httpx
import orjson

from config.settings import LaneSettings, ProviderSettings, Settings
from scheduler.ledger import ids, keys
from scheduler.ledger.jobs import NewJob, lane_name
from scheduler.ledger.ledger import Ledger
from scheduler.planning.batches import Batches
from scheduler.planning.lanes import effective
from tests.conftest import make_settings
from tests.workers.batch_harness import make_ctx
from workers.tasks.batches import batch_lines

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"


def job(provider: str, endpoint: str, body: dict[str, object], prefix: str) -> NewJob:
    return NewJob(
        id=ids.job_id(),
        tenant="acme",
        provider=provider,
        endpoint=endpoint,
        model=str(body["model"]),
        body=orjson.dumps(body),
        deadline_ms=10_000_000,
        created_ms=0,
        prefix=prefix,
    )


def conf(redis_url: str, **lanes: LaneSettings) -> Settings:
    return make_settings(
        redis_url,
        providers={
            "openai": ProviderSettings(kind="openai", base_url="http://127.0.0.1:9/v1"),
            "anthropic": ProviderSettings(kind="anthropic", base_url="http://127.0.0.1:9"),
        },
        lanes=lanes,
    )


async def lines_of(settings: Settings, redis, jobs: list[NewJob]) -> list[tuple[str, dict]]:
    await Ledger(redis).enqueue_many(jobs)
    await redis.set(keys.LEADER_FENCE, "1")
    first = jobs[0]
    lane = effective(settings, first.provider, first.model, first.endpoint)
    await Batches(redis).reserve(lane, "bat_1", token=1, now_ms=0, chunk=100)
    async with httpx.AsyncClient() as http:
        ctx = await make_ctx(settings, http)
        record = await Batches(redis).get("bat_1")
        assert record is not None
        lines = [(line.custom_id, orjson.loads(line.body)) async for line in batch_lines(ctx, record, [0])]
        await ctx["redis"].aclose()
    return lines


async def test_openai_groups_are_adjacent_with_a_prompt_cache_key(redis, redis_url) -> None:
    settings = conf(redis_url)
    jobs = [
        job("openai", CHAT, {"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": f"q{i}"}]}, p)
        for i, p in enumerate(["b", "a", "b", "a", "b", "a"])
    ]
    jobs[4] = job("openai", CHAT, {"model": "gpt-4.1-mini", "messages": [], "prompt_cache_key": "mine"}, "b")
    lines = await lines_of(settings, redis, jobs)
    keys_sent = [body.get("prompt_cache_key") for _, body in lines]
    assert keys_sent[:3] == ["bs-a"] * 3
    assert sorted(keys_sent[3:]) == ["bs-b", "bs-b", "mine"]
    assert {cid for cid, _ in lines} == {j.id for j in jobs}


async def test_anthropic_breakpoints_get_the_one_hour_ttl(redis, redis_url) -> None:
    settings = conf(redis_url)
    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 8,
        "system": [{"type": "text", "text": "doc", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "q"}],
    }
    ((_, sent),) = await lines_of(settings, redis, [job("anthropic", MESSAGES, body, "k")])
    assert sent["system"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}


async def test_a_host_refusing_prompt_cache_key_gets_none(redis, redis_url) -> None:
    settings = conf(redis_url)
    settings.providers["openai"] = settings.providers["openai"].model_copy(update={"prompt_cache_key": False})
    body = {"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "q"}]}
    ((_, sent),) = await lines_of(settings, redis, [job("openai", CHAT, body, "a")])
    assert sent == body


async def test_a_plain_lane_sends_bodies_untouched(redis, redis_url) -> None:
    settings = conf(
        redis_url, **{lane_name("openai", "gpt-4.1-mini", CHAT): LaneSettings(group_prefixes=False)}
    )
    body = {"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "q"}]}
    ((_, sent),) = await lines_of(settings, redis, [job("openai", CHAT, body, "a")])
    assert sent == body


async def test_reservation_counts_prefixed_jobs_and_a_batch_without_any_comes_out_in_id_order(
    redis, redis_url
) -> None:
    """The batch record counts its prefixed jobs; with none, the grouping lane's lines come out in
    id order (what sorting by an empty prefix gives) without a prefix read, bodies untouched."""
    settings = conf(redis_url)
    plain = [
        job("openai", CHAT, {"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": f"q{i}"}]}, "")
        for i in range(5)
    ]
    lines = await lines_of(settings, redis, list(reversed(plain)))
    assert await redis.hget(keys.batch("bat_1"), "prefixed") == b"0"
    assert [cid for cid, _ in lines] == sorted(j.id for j in plain)
    assert [body for _, body in lines] == [orjson.loads(j.body) for j in sorted(plain, key=lambda j: j.id)]

    await redis.flushdb()
    mixed = [*plain[:2], job("openai", CHAT, {"model": "gpt-4.1-mini", "messages": []}, "a")]
    await lines_of(settings, redis, mixed)
    assert await redis.hget(keys.batch("bat_1"), "prefixed") == b"1"
