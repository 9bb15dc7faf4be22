"""Deduplication end to end: intake's validation and admission, the scheduler's tick, an arq worker
and the emulator over HTTP on one virtual clock (the pipeline of :mod:`tests.test_slo_e2e`). Jobs
enter as the bulk API enters them (validate, admit, enqueue_many), stamped with the virtual clock.

Provider requests are counted at the emulator: the lines of every batch it was sent (its own
``request_counts``, read with the official OpenAI SDK) plus every synchronous call it answered.
The emulator's answer is a pure function of the request body, so "each job holds the right result"
is checked against the answer the emulator gives for that job's own body.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from openai import OpenAI

from config.settings import DedupSettings, Settings
from emulator import server
from emulator.outputs import reply, seed_of
from scheduler.costs.admission import AdmissionGate
from scheduler.intake import admit, validate
from scheduler.ledger.ledger import Ledger
from tests import test_slo_e2e as slo
from tests.api.harness import ACME, asgi_client
from tests.test_slo_e2e import Pipeline, all_terminal, records
from tests.workers.receiver import Receiver, running_receiver

pytestmark = pytest.mark.timeout(900)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # acme's signing secret in tests.conftest
MODEL = "gpt-4o-mini"

# The SLO end-to-end emulator, pager and pipeline harness, shared by name (on the default Redis server).
emulator_url = slo.emulator_url
emulator = slo.emulator
pagerduty = slo.pagerduty
harness = slo.harness


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver(secrets=(SECRET,)) as rx:
        yield rx


def dedup_settings(
    redis_url: str, emulator: server.EmulatorControl, pagerduty: Receiver, **dedup: Any
) -> Settings:
    settings: Settings = slo.e2e_settings(redis_url, emulator, pagerduty)
    acme = settings.tenants["acme"]
    settings.tenants["acme"] = acme.model_copy(update={"dedup": DedupSettings(enabled=True, **dedup)})
    settings.webhook_allowlist = ["127.0.0.0/8"]
    return settings


def body(question: int) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": f"question {question}"}]}


async def bulk(pipeline: Pipeline, items: list[dict[str, Any]]) -> list[str]:
    """Enqueue as the bulk API does, at the pipeline's virtual time; every item must be created."""
    settings = pipeline.scheduler.settings
    gate = AdmissionGate(settings, pipeline.scheduler.redis)
    jobs = [
        await admit(validate(item, tenant="acme", now_ms=pipeline.clock.ms, settings=settings), gate)
        for item in items
    ]
    outcomes = await pipeline.ledger.enqueue_many(jobs)
    assert {o.status for o in outcomes} == {"created"}
    return [o.job_id for o in outcomes]


def provider_requests(emulator: server.EmulatorControl) -> tuple[int, int]:
    """(batch request lines, synchronous calls) the emulator received since its reset."""
    client = OpenAI(base_url=f"{emulator.url}/v1", api_key="sk-test")
    lines = sum(b.request_counts.total for b in client.batches.list(limit=100) if b.request_counts)
    sync = [r for r in emulator.requests() if r["method"] == "POST" and r["path"] == "/v1/chat/completions"]
    return lines, len(sync)


async def answer_text(ledger: Ledger, job_id: str) -> str:
    result = await ledger.result(job_id)
    assert result is not None
    return str(orjson.loads(result)["choices"][0]["message"]["content"])


def expected_text(request: dict[str, Any]) -> str:
    """What the emulator answers to this body (emulator/outputs.py: a pure function of the body)."""
    return reply(seed_of(request), None)[0]


async def test_a_thousand_jobs_with_three_hundred_duplicates_make_seven_hundred_provider_requests(
    redis, redis_url, emulator, pagerduty, harness
):
    settings = dedup_settings(redis_url, emulator, pagerduty)
    pipeline: Pipeline = harness(settings)
    rng = random.Random(20)
    # 700 distinct requests; 300 more repeat some of them (up to 4 copies of one), shuffled in.
    questions = list(range(700)) + [rng.randrange(700) for _ in range(300)]
    rng.shuffle(questions)
    requests = [body(q) for q in questions]
    job_ids = await bulk(pipeline, [{"provider": "openai", "body": r, "deadline_in": 600} for r in requests])
    assert len(set(job_ids)) == 1000

    await pipeline.run_until(all_terminal(pipeline.ledger, job_ids), within_s=60)
    lines, sync_calls = provider_requests(emulator)
    assert (lines, sync_calls) == (700, 0)

    jobs = await records(pipeline.ledger, job_ids)
    followers = [j for j in jobs if j.dedup_of is not None]
    assert len(followers) == 300
    for job, request in zip(jobs, requests, strict=True):
        assert (job.state, job.route) == ("succeeded", "batch")
        assert job.completed_ms is not None
        assert job.completed_ms <= job.deadline_ms
        assert await answer_text(pipeline.ledger, job.id) == expected_text(request)

    async with asgi_client(settings, redis, ACME) as client:
        costs = (await client.get("/v1/costs")).json()["total"]
    assert costs["jobs"] == 1000
    assert costs["deduplicated_jobs"] == 300
    assert costs["deduplicated_saved_usd"] > 0
    # Split evenly, the group's shares add up to its one call: the total is 700 calls' cost.
    leaders = [j for j in jobs if j.dedup_of is None]
    assert costs["actual_usd"] == pytest.approx(sum(j.cost["actual_usd"] for j in jobs if j.cost), rel=1e-6)
    assert costs["deduplicated_saved_usd"] == pytest.approx(
        sum(j.cost["deduplicated_saved_usd"] for j in jobs if j.cost and "deduplicated_saved_usd" in j.cost),
        rel=1e-6,
    )
    assert len(leaders) == 700


async def test_every_job_of_a_group_fires_its_own_webhook(
    redis, redis_url, emulator, pagerduty, harness, receiver
):
    settings = dedup_settings(redis_url, emulator, pagerduty)
    pipeline: Pipeline = harness(settings)
    item = {"provider": "openai", "body": body(1), "deadline_in": 600, "callback_url": receiver.url}
    job_ids = await bulk(pipeline, [item, item, item])
    await pipeline.run_until(all_terminal(pipeline.ledger, job_ids), within_s=20)

    async def delivered() -> bool:
        return len(receiver.requests) >= len(job_ids)

    await pipeline.run_until(delivered, within_s=20)
    assert all(r.verified for r in receiver.requests)
    events = [orjson.loads(r.body) for r in receiver.requests]
    assert sorted(e["data"]["id"] for e in events) == sorted(job_ids)
    assert {e["type"] for e in events} == {"job.succeeded"}
    assert {e["data"]["result"]["choices"][0]["message"]["content"] for e in events} == {
        expected_text(body(1))
    }
    assert provider_requests(emulator) == (1, 0)


async def test_a_stalled_lane_flips_the_leader_and_its_followers_end_by_its_one_sync_call(
    redis, redis_url, emulator, pagerduty, harness
):
    """The followers are due no earlier than their leader, so the leader's flip keeps their deadlines."""
    settings = dedup_settings(redis_url, emulator, pagerduty)
    pipeline: Pipeline = harness(settings)
    emulator.configure(stall=[MODEL])
    job_ids = await bulk(pipeline, [{"provider": "openai", "body": body(2), "deadline_in": 6}] * 3)
    await pipeline.run_until(all_terminal(pipeline.ledger, job_ids), within_s=6)
    for job in await records(pipeline.ledger, job_ids):
        assert (job.state, job.route) == ("succeeded", "sync")
        assert job.completed_ms is not None
        assert job.completed_ms <= job.deadline_ms
        assert await answer_text(pipeline.ledger, job.id) == expected_text(body(2))
    assert provider_requests(emulator)[1] == 1


async def test_a_duplicate_due_before_its_leader_runs_alone_and_keeps_its_deadline(
    redis, redis_url, emulator, pagerduty, harness
):
    """The leader (60 s) waits out a stalled batch; the urgent copy (6 s) does not wait on it."""
    settings = dedup_settings(redis_url, emulator, pagerduty)
    pipeline: Pipeline = harness(settings)
    emulator.configure(stall=[MODEL])
    relaxed, urgent = await bulk(
        pipeline,
        [{"provider": "openai", "body": body(3), "deadline_in": d} for d in (60, 6)],
    )
    await pipeline.run_until(all_terminal(pipeline.ledger, [urgent]), within_s=6)
    urgent_job, relaxed_job = await records(pipeline.ledger, [urgent, relaxed])
    assert urgent_job.dedup_of is None
    assert (urgent_job.state, urgent_job.route) == ("succeeded", "sync")
    assert urgent_job.completed_ms is not None
    assert urgent_job.completed_ms <= urgent_job.deadline_ms
    assert not relaxed_job.terminal
