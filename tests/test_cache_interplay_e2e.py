"""Issue 20's three parts together, end to end: deduplication, prompt-prefix grouping and sibling lanes
acting on the same jobs, plus the prefix warm-up batch and a moved job's late batch answer.

The real pipeline of :mod:`tests.test_slo_e2e` (real Redis, the scheduler's tick, one arq worker, the
emulator over HTTP with its prompt-caching model, one virtual clock). The order the parts act in a
lane: dedup at intake (a follower never enters a lane queue), prefix grouping when a batch is
planned, sibling failover before any flip.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from config.settings import (
    DedupSettings,
    LaneDefaults,
    LaneSettings,
    ProviderSettings,
    SchedulerSettings,
    Settings,
)
from scheduler import intake
from scheduler.ledger import keys
from scheduler.ledger.jobs import lane_name
from scheduler.ledger.ledger import day_of
from scheduler.planning.batches import Batches
from tests import test_slo_e2e as slo
from tests.compat.support import CHAT, compat_app, compat_settings, openai_sdk
from tests.conftest import make_settings
from tests.test_dedup_e2e import SECRET, answer_text, bulk, expected_text, provider_requests
from tests.test_siblings_e2e import DEPLOYMENT, SIBLING, sibling_settings, sync_calls
from tests.test_slo_e2e import FAST_HTTP, Pipeline, all_terminal, records
from tests.workers.receiver import Receiver, running_receiver

pytestmark = pytest.mark.timeout(900)

emulator_url = slo.emulator_url
emulator = slo.emulator
pagerduty = slo.pagerduty
harness = slo.harness

PREFIX_TOKENS = 4_000  # the emulator counts a token per 4 bytes
OPENAI_CACHED = PREFIX_TOKENS // 128 * 128  # OpenAI caches in 128-token steps


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver(secrets=(SECRET,)) as rx:
        yield rx


def with_dedup(settings: Settings) -> Settings:
    acme = settings.tenants["acme"].model_copy(update={"dedup": DedupSettings(enabled=True)})
    return settings.model_copy(update={"tenants": {**settings.tenants, "acme": acme}})


def document(name: str) -> str:
    """A 4,000-token system prompt, distinct per ``name``."""
    return (f"Reference document {name}: " + "the quarterly figures and their notes. " * PREFIX_TOKENS)[
        : PREFIX_TOKENS * 4
    ]


def chat(model: str, system: str, question: str) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
    }


# 1. Interplay -------------------------------------------------------------------------------------


async def test_a_dedup_leader_moved_to_a_sibling_still_answers_its_followers(
    redis, redis_url, emulator, pagerduty, harness
):
    settings = with_dedup(sibling_settings(redis_url, emulator, pagerduty))
    pipeline: Pipeline = harness(settings)
    emulator.configure(stall=["gpt-4o-mini"])  # OpenAI's batches make no progress; Azure's do
    item = {
        "provider": "openai",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "q"}]},
    }
    leader, *followers = await bulk(pipeline, [item | {"deadline_in": 20}] * 3)
    await pipeline.run_until(all_terminal(pipeline.ledger, [leader, *followers]), within_s=20)

    leader_job, *follower_jobs = await records(pipeline.ledger, [leader, *followers])
    assert (leader_job.state, leader_job.route, leader_job.lane) == ("succeeded", "batch", SIBLING)
    assert leader_job.raw["relaned_from"].decode() == slo.LANE
    answer = await pipeline.ledger.result(leader)
    assert answer is not None
    assert orjson.loads(answer)["model"] == DEPLOYMENT
    for job in [leader_job, *follower_jobs]:
        assert job.completed_ms is not None
        assert job.completed_ms <= job.deadline_ms
    for job in follower_jobs:
        assert job.dedup_of == leader
        assert job.state == "succeeded"
        assert await pipeline.ledger.result(job.id) == answer  # the leader's one call, on the sibling
    assert sync_calls(emulator) == []
    azure_lines = [r for r in emulator.requests() if r["method"] == "POST" and r["path"] == "/openai/batches"]
    assert len(azure_lines) == 1  # one Azure batch, for the leader alone


async def test_a_dedup_group_inside_a_prefix_group_sends_one_line_and_reads_the_cache(
    redis, redis_url, emulator, harness
):
    model = "gpt-4.1-mini"
    conf = with_dedup(
        make_settings(
            redis_url,
            providers={
                "openai": ProviderSettings(
                    kind="openai", base_url=f"{emulator.url}/v1", api_key="sk-test", http=FAST_HTTP
                )
            },
            lane_defaults=LaneDefaults(max_wait=0.1),
            scheduler=SchedulerSettings(
                tick_interval_s=0.1, poll_initial_s=0.1, poll_max_s=0.2, poll_backoff=1, lease_ttl_s=10
            ),
        )
    )
    pipeline: Pipeline = harness(conf)
    # Two prefix groups of 6 distinct questions each; group A's question 0 is asked 4 times in all.
    bodies = [chat(model, document(g), f"question {i}") for g in ("A", "B") for i in range(6)]
    bodies += [chat(model, document("A"), "question 0")] * 3
    job_ids = await bulk(pipeline, [{"provider": "openai", "body": b, "deadline_in": 600} for b in bodies])
    await pipeline.run_until(all_terminal(pipeline.ledger, job_ids), within_s=30)

    jobs = await records(pipeline.ledger, job_ids)
    assert len({j.raw["prefix"] for j in jobs}) == 2  # dedup keeps the prefix group of every job
    followers = [j for j in jobs if j.dedup_of is not None]
    assert len(followers) == 3
    assert {f.dedup_of for f in followers} == {job_ids[0]}
    assert provider_requests(emulator) == (12, 0)  # one line per distinct request
    for job, request in zip(jobs, bodies, strict=True):
        assert (job.state, job.route) == ("succeeded", "batch")
        sent = request | {"prompt_cache_key": f"bs-{job.raw['prefix'].decode()}"}  # the line as sent
        assert await answer_text(pipeline.ledger, job.id) == expected_text(sent)
    cached = {
        j.id: (j.usage or {}).get("prompt_tokens_details", {}).get("cached_tokens", 0)
        for j in jobs
        if j.dedup_of is None
    }
    # One cold read per group; a follower counts no cached tokens (its leader's call did).
    assert sorted(cached.values()) == [0, 0] + [OPENAI_CACHED] * 10


async def test_a_relaned_job_takes_the_prefix_group_of_its_new_lane(
    redis, redis_url, emulator, pagerduty, harness
):
    """The sibling counts prefixes over 2,000 tokens, the OpenAI lane over 1,024: a moved job's key is
    the one a job enqueued on the sibling directly gets, so it groups with the sibling's own jobs."""
    base = sibling_settings(redis_url, emulator, pagerduty)
    settings = base.model_copy(update={"lanes": {**base.lanes, SIBLING: LaneSettings(prefix_tokens=2_000)}})
    pipeline: Pipeline = harness(settings)
    emulator.configure(stall=["gpt-4o-mini"])
    moved = await bulk(
        pipeline,
        [
            {"provider": "openai", "body": chat("gpt-4o-mini", document("C"), f"q{i}"), "deadline_in": 20}
            for i in range(2)
        ],
    )
    native = intake.validate(
        {"provider": "azure", "body": chat(DEPLOYMENT, document("C"), "q9"), "deadline_in": 20},
        tenant="acme",
        now_ms=pipeline.clock.ms,
        settings=settings,
    )
    before = {j.raw["prefix"] for j in await records(pipeline.ledger, moved)}
    assert len(before) == 1
    assert native.prefix
    assert native.prefix.encode() not in before
    await pipeline.run_until(all_terminal(pipeline.ledger, moved), within_s=20)
    for job in await records(pipeline.ledger, moved):
        assert (job.state, job.route, job.lane) == ("succeeded", "batch", SIBLING)
        assert job.raw["prefix"].decode() == native.prefix


async def test_a_relaned_job_to_a_lane_that_does_not_group_has_no_prefix(
    redis, redis_url, emulator, pagerduty, harness
):
    base = sibling_settings(redis_url, emulator, pagerduty)
    settings = base.model_copy(update={"lanes": {**base.lanes, SIBLING: LaneSettings(group_prefixes=False)}})
    pipeline: Pipeline = harness(settings)
    emulator.configure(stall=["gpt-4o-mini"])
    [job_id] = await bulk(
        pipeline, [{"provider": "openai", "body": chat("gpt-4o-mini", document("D"), "q"), "deadline_in": 20}]
    )
    [before] = await records(pipeline.ledger, [job_id])
    assert before.raw["prefix"]
    await pipeline.run_until(all_terminal(pipeline.ledger, [job_id]), within_s=20)
    [job] = await records(pipeline.ledger, [job_id])
    assert (job.state, job.lane) == ("succeeded", SIBLING)
    assert job.raw.get("prefix", b"") == b""


async def test_a_client_batch_line_dedups_against_a_job_and_another_line(
    redis, redis_url, emulator, pagerduty, harness
):
    settings = with_dedup(compat_settings(redis_url, emulator, pagerduty))
    pipeline: Pipeline = harness(settings)
    x = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "question x"}]}
    y = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "question y"}]}
    [api_job] = await bulk(pipeline, [{"provider": "openai", "body": x, "deadline_in": 600}])
    lines = [("line-x", x), ("line-y1", y), ("line-y2", y)]
    payload = "".join(
        json.dumps({"custom_id": cid, "method": "POST", "url": CHAT, "body": body}) + "\n"
        for cid, body in lines
    ).encode()
    async with compat_app(settings, redis, pipeline) as app, openai_sdk(app) as sdk:
        uploaded = await sdk.files.create(file=("in.jsonl", payload), purpose="batch")
        created = await sdk.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")

        async def completed() -> bool:
            return (await sdk.batches.retrieve(created.id)).status == "completed"

        await pipeline.run_until(completed, within_s=30)
        done = await sdk.batches.retrieve(created.id)
        assert done.output_file_id is not None
        output = [
            json.loads(line) for line in (await sdk.files.content(done.output_file_id)).text.splitlines()
        ]
    answers = {
        line["custom_id"]: line["response"]["body"]["choices"][0]["message"]["content"] for line in output
    }
    assert answers == {cid: expected_text(body) for cid, body in lines}
    job_ids = [line["response"]["request_id"] for line in output]
    jobs = {j.id: j for j in await records(pipeline.ledger, job_ids)}
    by_line = {line["custom_id"]: jobs[line["response"]["request_id"]] for line in output}
    assert by_line["line-x"].dedup_of == api_job  # against a job of the ordinary API
    assert by_line["line-y2"].dedup_of == by_line["line-y1"].id  # against another line
    assert await answer_text(pipeline.ledger, api_job) == expected_text(x)
    assert provider_requests(emulator) == (2, 0)


# 2. The reported gaps ------------------------------------------------------------------------------

ANTHROPIC_MODEL = "claude-haiku-4-5"


async def test_a_large_prefix_group_is_warmed_by_a_one_request_batch_then_reads_the_cache(
    redis, redis_url, emulator, harness
):
    lane = lane_name("anthropic", ANTHROPIC_MODEL, "/v1/messages")
    conf = make_settings(
        redis_url,
        providers={
            "anthropic": ProviderSettings(
                kind="anthropic", base_url=emulator.url, api_key="sk-ant-warm", http=FAST_HTTP
            )
        },
        lane_defaults=LaneDefaults(max_wait=0.1),
        lanes={lane: LaneSettings(warmup_min_group=5)},
        scheduler=SchedulerSettings(
            tick_interval_s=0.1, poll_initial_s=0.1, poll_max_s=0.2, poll_backoff=1, lease_ttl_s=10
        ),
    )
    pipeline: Pipeline = harness(conf)
    group = 12
    jobs = []
    for i in range(group):
        body = {
            "model": ANTHROPIC_MODEL,
            "max_tokens": 32,
            "system": [{"type": "text", "text": document("W"), "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": f"question {i}"}],
        }
        jobs.append(
            intake.validate(
                {"provider": "anthropic", "body": body, "deadline_in": 3600},
                tenant="acme",
                now_ms=pipeline.clock.ms,
                settings=conf,
            )
        )
    job_ids = [o.job_id for o in await pipeline.ledger.enqueue_many(jobs)]
    await pipeline.run_until(all_terminal(pipeline.ledger, job_ids), within_s=60)

    done = await records(pipeline.ledger, job_ids)
    assert {(j.state, j.route) for j in done} == {("succeeded", "batch")}
    batches = Batches(redis)
    found = {bid: await batches.get(bid) for bid in {j.batch_id for j in done if j.batch_id}}
    records_by_start = sorted((b for b in found.values() if b is not None), key=lambda b: b.submitted_ms or 0)
    warmup, *rest = records_by_start
    assert warmup.requests == 1
    assert rest
    assert sum(b.requests for b in rest) == group - 1
    assert warmup.ended_ms is not None
    assert all(b.submitted_ms is not None and b.submitted_ms >= warmup.ended_ms for b in rest)
    [warm_job] = [j for j in done if j.batch_id == warmup.id]
    assert (warm_job.usage or {}).get("cache_creation_input_tokens") == PREFIX_TOKENS
    for job in done:
        if job.id != warm_job.id:
            usage = job.usage or {}
            assert usage.get("cache_read_input_tokens") == PREFIX_TOKENS, usage
            assert usage.get("cache_creation_input_tokens", 0) == 0
    creates = [
        r for r in emulator.requests() if r["method"] == "POST" and r["path"] == "/v1/messages/batches"
    ]
    assert len(creates) == len(records_by_start)


@pytest.mark.parametrize("dedup", [False, True], ids=["plain", "with-a-dedup-follower"])
async def test_a_moved_jobs_stalled_batch_completing_later_is_duplicate_spend_answered_once(
    redis, redis_url, emulator, pagerduty, harness, receiver, dedup
):
    """The stalled OpenAI batch cannot be cancelled (the emulator refuses the cancel); its jobs move to
    the Azure sibling and finish there. The stall then lifts and the old batch completes with answers
    for all of them: each is recorded as duplicate spend, no job is answered or notified twice. With
    dedup on, a fourth job repeats the first: it never entered a batch, and ends once, with its leader."""
    base = sibling_settings(redis_url, emulator, pagerduty)
    settings = base.model_copy(update={"webhook_allowlist": ["127.0.0.0/8"]})
    if dedup:
        settings = with_dedup(settings)
    pipeline: Pipeline = harness(settings)
    emulator.configure(stall=["gpt-4o-mini"], server_error={"POST /v1/batches/*/cancel": 1.0})
    items = [
        {
            "provider": "openai",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"question {i}"}]},
            "deadline_in": 20,
            "callback_url": receiver.url,
        }
        for i in range(3)
    ]
    job_ids = await bulk(pipeline, items + items[:1] if dedup else items)
    await pipeline.run_until(all_terminal(pipeline.ledger, job_ids), within_s=20)
    ended = await records(pipeline.ledger, job_ids)
    moved = [j for j in ended if j.dedup_of is None]
    assert len(moved) == 3
    assert {(j.state, j.route, j.lane) for j in moved} == {("succeeded", "batch", SIBLING)}
    if dedup:
        [follower] = [j for j in ended if j.dedup_of is not None]
        assert follower.dedup_of == job_ids[0]
        assert "relaned_from" not in follower.raw  # it waited on its leader, in no queue or batch
    [old_batch_id] = {j.raw["relaned_from_batch"].decode() for j in moved}
    answers = {j.id: await pipeline.ledger.result(j.id) for j in ended}
    if dedup:
        assert answers[job_ids[-1]] == answers[job_ids[0]]  # the follower has its leader's answer
    costs = {j.id: j.cost for j in ended}
    day_total = keys.agg_total(day_of(pipeline.start_ms), "acme")
    assert float((await redis.hgetall(day_total)).get(b"duplicate_usd", 0)) == 0

    emulator.configure(stall=[])
    batches = Batches(redis)

    async def old_batch_ended() -> bool:
        record = await batches.get(old_batch_id)
        return record is not None and record.ended_ms is not None

    await pipeline.run_until(old_batch_ended, within_s=20)
    await pipeline.run_for(2)  # any webhook or ingest the late batch could cause has run
    old = await batches.get(old_batch_id)
    assert old is not None
    assert old.state == "ingested", old
    # Completed with an answer for every moved job: all three skipped, none applied.
    assert (old.raw["status"], old.raw["completed"], old.raw["ingest_skipped"]) == ("completed", "3", "3")
    total = await redis.hgetall(day_total)
    assert float(total[b"duplicate_usd"]) > 0
    late = await records(pipeline.ledger, job_ids)
    assert sum(float(j.cost["actual_usd"]) for j in late if j.cost) == pytest.approx(
        sum(float(c["actual_usd"]) for c in costs.values() if c)
    )
    for job in late:
        assert (job.state, job.route) == ("succeeded", "batch")
        assert await pipeline.ledger.result(job.id) == answers[job.id]  # the sibling's answer stays
        assert job.cost == costs[job.id]
    events = [orjson.loads(r.body) for r in receiver.requests]
    assert sorted(e["data"]["id"] for e in events) == sorted(job_ids)  # one webhook per job
    assert sync_calls(emulator) == []
