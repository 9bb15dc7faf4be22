"""Prompt prefixes: the key intake stores, the cache hints a batch sends, and how a grouping batch
picks its members (pure rules, then Batches.reserve_grouped on a real Redis)."""

from __future__ import annotations

import orjson
import pytest

from config.settings import LaneSettings, ProviderSettings, Settings
from scheduler import intake
from scheduler.ledger import ids, keys
from scheduler.ledger.jobs import NewJob
from scheduler.ledger.ledger import Ledger
from scheduler.planning import prefixes
from scheduler.planning.batches import Batches
from scheduler.planning.lanes import effective

CHAT = "/v1/chat/completions"
DOC = "Reference text. " * 300  # 4,800 bytes: past 1,024 tokens' worth


def chat(system: str, question: str, **extra: object) -> dict[str, object]:
    return {
        "model": "gpt-4.1-mini",
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
        **extra,
    }


def key(body: dict[str, object], kind: str = "openai", endpoint: str = CHAT, tokens: int = 1024) -> str:
    return prefixes.prefix_key(body, kind=kind, endpoint=endpoint, prefix_tokens=tokens)


def test_jobs_sharing_leading_content_share_a_key() -> None:
    assert key(chat(DOC, "one")) == key(chat(DOC, "two")) != ""
    assert key(chat("Other. " + DOC, "one")) != key(chat(DOC, "one"))


def test_a_prompt_shorter_than_prefix_tokens_has_no_key() -> None:
    assert key(chat("short", "one")) == ""
    assert key(chat("short", "one"), tokens=2) != ""
    assert key({"model": "e", "input": DOC}, endpoint="/v1/embeddings") == ""


def anthropic(system_text: str, question: str, control: dict[str, str] | None) -> dict[str, object]:
    block: dict[str, object] = {"type": "text", "text": system_text}
    if control is not None:
        block["cache_control"] = control
    return {
        "model": "claude-haiku-4-5",
        "max_tokens": 8,
        "system": [block],
        "messages": [{"role": "user", "content": question}],
    }


def test_anthropic_key_ends_at_the_last_breakpoint_whatever_its_ttl() -> None:
    ephemeral = {"type": "ephemeral"}
    short = anthropic("short system", "q1", ephemeral)
    assert key(short, "anthropic", "/v1/messages") != ""  # the producer's breakpoint decides, not length
    assert key(short, "anthropic", "/v1/messages") == key(
        anthropic("short system", "q2", ephemeral), "anthropic", "/v1/messages"
    )
    assert key(short, "anthropic", "/v1/messages") == key(
        anthropic("short system", "q2", {"type": "ephemeral", "ttl": "1h"}), "anthropic", "/v1/messages"
    )
    assert key(anthropic("short system", "q1", None), "anthropic", "/v1/messages") == ""


def test_openai_hint_is_a_prompt_cache_key_unless_the_producer_set_one() -> None:
    body = orjson.dumps(chat(DOC, "one"))
    hinted = orjson.loads(prefixes.with_cache_hints(body, "abc", kind="openai", endpoint=CHAT))
    assert hinted["prompt_cache_key"] == "bs-abc"
    assert {k: v for k, v in hinted.items() if k != "prompt_cache_key"} == orjson.loads(body)
    own = orjson.dumps(chat(DOC, "one", prompt_cache_key="mine"))
    assert prefixes.with_cache_hints(own, "abc", kind="openai", endpoint=CHAT) == own
    assert prefixes.with_cache_hints(body, "", kind="openai", endpoint=CHAT) == body
    assert prefixes.with_cache_hints(body, "abc", kind="azure_openai", endpoint=CHAT) == body


def test_anthropic_hint_makes_every_breakpoint_one_hour_unless_the_producer_chose() -> None:
    body = anthropic(DOC, "q", {"type": "ephemeral"})
    body["messages"] = [
        {"role": "user", "content": [{"type": "text", "text": "doc", "cache_control": {"type": "ephemeral"}}]}
    ]
    hinted = orjson.loads(
        prefixes.with_cache_hints(orjson.dumps(body), "k", kind="anthropic", endpoint="/v1/messages")
    )
    assert hinted["system"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert hinted["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    chosen = orjson.dumps(anthropic(DOC, "q", {"type": "ephemeral", "ttl": "5m"}))
    assert prefixes.with_cache_hints(chosen, "k", kind="anthropic", endpoint="/v1/messages") == chosen


def test_group_order_puts_urgent_jobs_first_then_whole_groups_by_earliest_deadline() -> None:
    band = [
        ("u1", 10, "b"),
        ("a1", 20, "a"),
        ("b1", 30, "b"),
        ("n1", 35, ""),
        ("a2", 40, "a"),
        ("b2", 50, "b"),
    ]
    assert prefixes.group_order(band, urgent_until_ms=10) == ["u1", "a1", "a2", "b1", "b2", "n1"]
    assert prefixes.group_order(band, urgent_until_ms=0) == ["u1", "b1", "b2", "a1", "a2", "n1"]


def test_intake_stores_the_key_unless_the_lane_groups_nothing(settings: Settings) -> None:
    raw = {"provider": "openai", "body": chat(DOC, "one")}
    job = intake.validate(raw, tenant="acme", now_ms=1_000, settings=settings)
    assert job.prefix == key(chat(DOC, "one"))
    assert job.fields()["prefix"] == job.prefix
    off = settings.model_copy(
        update={"lanes": {f"openai:gpt-4.1-mini:{CHAT}": LaneSettings(group_prefixes=False)}}
    )
    assert intake.validate(raw, tenant="acme", now_ms=1_000, settings=off).prefix == ""


def grouped_job(prefix: str, deadline_ms: int) -> NewJob:
    return NewJob(
        id=ids.job_id(),
        tenant="acme",
        provider="openai",
        endpoint=CHAT,
        model="gpt-4.1-mini",
        body=b'{"model":"gpt-4.1-mini","messages":[]}',
        deadline_ms=deadline_ms,
        created_ms=0,
        prefix=prefix,
    )


@pytest.fixture
def lane_settings(redis_url: str) -> Settings:
    return Settings(
        redis_url=redis_url,
        providers={"openai": ProviderSettings(kind="openai", base_url="http://127.0.0.1:9/v1")},
        lanes={f"openai:gpt-4.1-mini:{CHAT}": LaneSettings(max_batch_requests=4)},
    )


async def test_a_grouping_batch_takes_urgent_jobs_then_whole_groups(redis, lane_settings) -> None:
    ledger = Ledger(redis)
    # Deadlines interleave groups a and b; x1 is under pressure.
    x1 = grouped_job("x", 1_000)
    a = [grouped_job("a", 2_000 + 20 * i) for i in range(3)]
    b = [grouped_job("b", 2_010 + 20 * i) for i in range(3)]
    await ledger.enqueue_many([x1, *a, *b])
    await redis.set(keys.LEADER_FENCE, "1")
    lane = effective(lane_settings, "openai", "gpt-4.1-mini", CHAT)
    store = Batches(redis)
    taken, banded = await store.reserve_grouped(
        lane, "bat_1", token=1, now_ms=0, chunk=2, until_ms=10_000, urgent_until_ms=1_500
    )
    assert (taken, banded) == (4, False)
    members = {m.decode() for m in await redis.smembers(keys.batch_jobs("bat_1"))}
    assert members == {x1.id, *(j.id for j in a)}  # without grouping: x1, a0, b0, a1
    taken, _ = await store.reserve_grouped(
        lane, "bat_2", token=1, now_ms=0, chunk=2, until_ms=10_000, urgent_until_ms=1_500
    )
    assert taken == 3
    assert {m.decode() for m in await redis.smembers(keys.batch_jobs("bat_2"))} == {j.id for j in b}


async def test_a_lane_without_prefixes_is_reserved_in_deadline_order(
    redis, lane_settings, monkeypatch
) -> None:
    ledger = Ledger(redis)
    jobs = [grouped_job("", 1_000 + i) for i in range(6)]
    await ledger.enqueue_many(jobs)
    await redis.set(keys.LEADER_FENCE, "1")
    lane = effective(lane_settings, "openai", "gpt-4.1-mini", CHAT)
    taken, _ = await Batches(redis).reserve_grouped(
        lane, "bat_1", token=1, now_ms=0, chunk=100, until_ms=10_000, urgent_until_ms=0
    )
    assert taken == 4
    assert {m.decode() for m in await redis.smembers(keys.batch_jobs("bat_1"))} == {j.id for j in jobs[:4]}


async def test_a_large_group_is_warmed_by_one_request_before_the_rest(redis, redis_url) -> None:
    settings = Settings(
        redis_url=redis_url,
        providers={"openai": ProviderSettings(kind="openai", base_url="http://127.0.0.1:9/v1")},
        lanes={f"openai:gpt-4.1-mini:{CHAT}": LaneSettings(max_batch_requests=10, warmup_min_group=3)},
    )
    a = [grouped_job("a", 2_000 + i) for i in range(4)]
    small = [grouped_job("s", 2_100 + i) for i in range(2)]
    await Ledger(redis).enqueue_many([*a, *small])
    await redis.set(keys.LEADER_FENCE, "1")
    lane = effective(settings, "openai", "gpt-4.1-mini", CHAT)
    store = Batches(redis)

    async def plan(batch_id: str, urgent_until_ms: int = 0) -> set[str]:
        await store.reserve_grouped(
            lane, batch_id, token=1, now_ms=0, chunk=100, until_ms=10_000, urgent_until_ms=urgent_until_ms
        )
        return {m.decode() for m in await redis.smembers(keys.batch_jobs(batch_id))}

    assert await plan("bat_warm") == {a[0].id}  # the warm-up: the group's first job, alone
    assert await plan("bat_2") == {j.id for j in small}  # group a waits for its warm-up batch
    assert await plan("bat_3") == set()
    await store.update("bat_warm", ["planned"], now_ms=1, to_state="ended")
    assert await plan("bat_4") == {j.id for j in a[1:]}  # warm now: the rest go together


async def test_no_warm_up_while_a_job_is_under_pressure(redis, redis_url) -> None:
    settings = Settings(
        redis_url=redis_url,
        providers={"openai": ProviderSettings(kind="openai", base_url="http://127.0.0.1:9/v1")},
        lanes={f"openai:gpt-4.1-mini:{CHAT}": LaneSettings(max_batch_requests=10, warmup_min_group=3)},
    )
    a = [grouped_job("a", 2_000 + i) for i in range(4)]
    await Ledger(redis).enqueue_many(a)
    await redis.set(keys.LEADER_FENCE, "1")
    lane = effective(settings, "openai", "gpt-4.1-mini", CHAT)
    taken, _ = await Batches(redis).reserve_grouped(
        lane, "bat_1", token=1, now_ms=0, chunk=100, until_ms=10_000, urgent_until_ms=2_000
    )
    assert taken == 4
    assert await redis.get(keys.prefix_warmup(lane.name, "a")) is None
