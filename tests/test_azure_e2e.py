"""Azure OpenAI Global Batch end to end: the scheduler's tick, an arq worker and the emulator's Azure
routes on one virtual clock (the pipeline of :mod:`tests.test_slo_e2e`).

Jobs name a Global Batch deployment; they go through Azure batches to results, webhooks and costs
priced as the deployment's model; a create refused with ``token_limit_exceeded`` holds the lane and
is retried without failing a job; a batch Azure never expires is abandoned after the completion
window plus the grace, its jobs sent on; a batch is polled no faster than once a minute.
"""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest

from config.settings import (
    HttpSettings,
    LaneDefaults,
    ProviderSettings,
    SchedulerSettings,
    Settings,
    SloSettings,
)
from emulator import server
from scheduler.ledger import ids, keys
from scheduler.ledger.jobs import NewJob
from scheduler.planning.batches import Batches, BatchRecord
from tests import test_slo_e2e as slo
from tests.api.harness import ADMIN, asgi_client
from tests.conftest import make_settings
from tests.test_slo_e2e import Pipeline, all_terminal, records
from tests.workers.receiver import Receiver, running_receiver

pytestmark = pytest.mark.timeout(600)

DEPLOYMENT = "gpt-4o-mini-batch"  # a Global Batch deployment of gpt-4o-mini
ENDPOINT = "/v1/chat/completions"
API_VERSION = "2024-10-21"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # acme's signing secret in tests.conftest
FAST_HTTP = HttpSettings(max_retries=2, backoff_base=0.01, backoff_max=0.05, read_timeout=10)


# The SLO end-to-end emulator and pipeline harness, shared by name (on the default Redis server).
emulator_url = slo.emulator_url
emulator = slo.emulator
harness = slo.harness


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver(secrets=(SECRET,)) as rx:
        yield rx


def azure_settings(
    redis_url: str,
    emulator: server.EmulatorControl,
    *,
    api_version: str | None = API_VERSION,
    scheduler: dict[str, float] | None = None,
    **provider: object,
) -> Settings:
    account = ProviderSettings(
        kind="azure_openai",
        base_url=f"{emulator.url}/openai",
        api_key="azure-key",
        api_version=api_version,
        deployments={DEPLOYMENT: "gpt-4o-mini"},
        http=FAST_HTTP,
        **provider,  # type: ignore[arg-type]
    )
    sched = {
        "tick_interval_s": 0.1,
        "poll_initial_s": 0.1,
        "poll_max_s": 0.2,
        "poll_backoff": 1,
        "lease_ttl_s": 10,
    }
    return make_settings(
        redis_url,
        providers={"azure": account},
        lane_defaults=LaneDefaults(max_wait=0.1),
        scheduler=SchedulerSettings(**(sched | (scheduler or {}))),  # type: ignore[arg-type]
        slo=SloSettings(prior_turnaround_s=1.0, min_samples=3, default_sync_latency_s=1.0, bucket_s=1),
        webhook_allowlist=["127.0.0.0/8"],
    )


async def enqueue(
    pipeline: Pipeline, n: int, deadline_s: float, *, callback_url: str | None = None, state: str = "queued"
) -> list[str]:
    now = pipeline.clock.ms
    jobs = [
        NewJob(
            id=ids.job_id(now),
            tenant="acme",
            provider="azure",
            endpoint=ENDPOINT,
            model=DEPLOYMENT,
            body=orjson.dumps({"model": DEPLOYMENT, "messages": [{"role": "user", "content": f"q {i}"}]}),
            deadline_ms=now + int(deadline_s * 1000),
            created_ms=now,
            callback_url=callback_url,
            state=state,  # type: ignore[arg-type]
        )
        for i in range(n)
    ]
    return [o.job_id for o in await pipeline.ledger.enqueue_many(jobs)]


async def batch_records(redis) -> list[BatchRecord]:
    found = []
    async for raw in redis.scan_iter(match=keys.batch("*")):
        batch_id = raw.decode().removeprefix(keys.batch(""))
        record = None if ":" in batch_id else await Batches(redis).get(batch_id)  # not its job sets
        if record is not None:
            found.append(record)
    return found


def azure_calls(emulator: server.EmulatorControl, method: str, suffix: str) -> list[dict]:
    return [
        r
        for r in emulator.requests()
        if r["method"] == method and r["path"].startswith("/openai/") and r["path"].endswith(suffix)
    ]


def jump(pipeline: Pipeline, seconds: float) -> None:
    """Move the shared clock on at once (a wait no step needs to watch)."""
    pipeline.clock.advance(seconds)
    pipeline.emulator.set_clock(pipeline.clock.seconds)


async def test_jobs_go_through_azure_batches_to_results_webhooks_and_costs(
    redis, redis_url, emulator, receiver, harness
):
    """Default poll floor: the submitted batch is next polled a minute later, not sooner."""
    settings = azure_settings(redis_url, emulator)
    pipeline = harness(settings)
    job_ids = await enqueue(pipeline, 3, 3600, callback_url=receiver.url)

    async def submitted() -> bool:
        return any(r.state == "submitted" for r in await batch_records(redis))

    await pipeline.run_until(submitted, within_s=5)
    [record] = await batch_records(redis)
    assert record.submitted_ms is not None
    due = await redis.zscore(keys.BATCHES_POLL, record.id)
    assert due is not None
    assert due - record.submitted_ms >= 60_000  # Azure: at most one poll a minute
    jump(pipeline, 60)
    await pipeline.run_until(all_terminal(pipeline.ledger, job_ids), within_s=10)

    for job in await records(pipeline.ledger, job_ids):
        assert (job.state, job.route, job.attempts) == ("succeeded", "batch", 0)
        result = await pipeline.ledger.result(job.id)
        assert result is not None
        assert orjson.loads(result)["model"] == DEPLOYMENT
        assert job.cost is not None  # priced as gpt-4o-mini, the deployment's model, at half price
        assert job.cost["actual_usd"] > 0
        assert job.cost["actual_usd"] == pytest.approx(job.cost["sync_equivalent_usd"] / 2)

    async def delivered() -> bool:
        return len(receiver.requests) >= len(job_ids)

    await pipeline.run_until(delivered, within_s=10)
    assert all(r.verified for r in receiver.requests)
    assert {orjson.loads(r.body)["data"]["id"] for r in receiver.requests} == set(job_ids)
    [create] = azure_calls(emulator, "POST", "/openai/batches")
    assert create["query"] == f"api-version={API_VERSION}"
    assert azure_calls(emulator, "POST", "/openai/files")
    assert not [r for r in emulator.requests() if r["path"].startswith("/v1/")]
    # The lane shows where every lane shows: its SLO snapshot, its costs and its Prometheus series.
    lane = (await records(pipeline.ledger, job_ids[:1]))[0].lane
    async with asgi_client(settings, redis, ADMIN) as client:
        lanes = await client.get("/v1/lanes")
        by_lane = await client.get("/v1/costs", params={"group_by": "lane"})
        metrics = await client.get("/metrics")
    assert lane in lanes.text, lanes.text
    assert lane in by_lane.text, by_lane.text
    assert f'lane="{lane}"' in metrics.text


@pytest.mark.parametrize(
    ("api_version", "path"),
    [
        (API_VERSION, f"/openai/deployments/{DEPLOYMENT}/chat/completions"),
        (None, "/openai/v1/chat/completions"),
    ],
)
async def test_sync_jobs_call_the_deployment(redis, redis_url, emulator, harness, api_version, path):
    pipeline = harness(azure_settings(redis_url, emulator, api_version=api_version))
    job_ids = await enqueue(pipeline, 2, 60, state="sync")
    await pipeline.run_until(all_terminal(pipeline.ledger, job_ids), within_s=5)
    for job in await records(pipeline.ledger, job_ids):
        assert (job.state, job.route) == ("succeeded", "sync")
        assert job.cost is not None
        assert job.cost["actual_usd"] == job.cost["sync_equivalent_usd"]
    assert [r["path"] for r in azure_calls(emulator, "POST", "/chat/completions")] == [path, path]


async def test_token_limit_refusal_holds_the_lane_and_retries_without_failing_jobs(
    redis, redis_url, emulator, harness
):
    """The hold is 600 virtual seconds: no create in the steps after the refusal; past it, the quota
    is free again and the same jobs go through by batch."""
    settings = azure_settings(
        redis_url, emulator, min_poll_interval_s=0, scheduler={"token_limit_backoff_s": 600}
    )
    pipeline = harness(settings)
    emulator.configure(token_limit_exceeded=[DEPLOYMENT])
    job_ids = await enqueue(pipeline, 3, 7200)

    async def refused() -> bool:
        return any(r.state == "failed" for r in await batch_records(redis))

    await pipeline.run_until(refused, within_s=5)
    [failed] = await batch_records(redis)
    assert orjson.loads(failed.raw["error"])["code"] == "token_limit_exceeded"
    for job in await records(pipeline.ledger, job_ids):
        assert job.state == "queued"  # back in the lane, not failed
    await pipeline.run_for(3)
    assert len(azure_calls(emulator, "POST", "/openai/batches")) == 1  # the lane is held

    emulator.configure(token_limit_exceeded=False)
    jump(pipeline, 600)
    await pipeline.run_until(all_terminal(pipeline.ledger, job_ids), within_s=10)
    for job in await records(pipeline.ledger, job_ids):
        assert (job.state, job.route) == ("succeeded", "batch")
        assert job.attempts == 1
    assert len(azure_calls(emulator, "POST", "/openai/batches")) == 2


async def test_a_batch_azure_never_expires_is_abandoned_after_the_window_and_grace(
    redis, redis_url, emulator, harness
):
    settings = azure_settings(
        redis_url,
        emulator,
        api_version=None,
        min_poll_interval_s=0,
        completion_window_s=2.0,
        scheduler={"overdue_grace_s": 1.0},
    )
    pipeline = harness(settings)
    emulator.configure(stall=[DEPLOYMENT])
    job_ids = await enqueue(pipeline, 3, 7200)

    async def abandoned() -> bool:
        return any(r.state == "failed" for r in await batch_records(redis))

    await pipeline.run_until(abandoned, within_s=6)
    [overdue] = [r for r in await batch_records(redis) if r.state == "failed"]
    assert orjson.loads(overdue.raw["error"])["code"] == "batch_overdue"
    assert overdue.submitted_ms is not None
    assert pipeline.clock.ms - overdue.submitted_ms > 3000  # not before the window plus the grace
    assert [r["path"] for r in azure_calls(emulator, "POST", "/cancel")] == [
        f"/openai/v1/batches/{overdue.provider_batch_id}/cancel"
    ]
    emulator.configure(stall=[])
    await pipeline.run_until(all_terminal(pipeline.ledger, job_ids), within_s=10)
    for job in await records(pipeline.ledger, job_ids):
        assert job.state == "succeeded"  # sent on, none lost or failed
        assert job.attempts >= 1 or job.route == "sync"
