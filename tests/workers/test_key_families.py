"""No Redis key family grows with the number of jobs: after a pipeline run (intake, batch, emulator,
ingestion, webhooks to a real receiver, a cancel) and a trim past retention, every family (a key's
name up to its first id) holds as many keys after 40 more jobs as after 5."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from config.settings import Settings, SloSettings, TenantSettings, WebhookSettings
from emulator.server import EmulatorControl
from scheduler.ledger import keys
from scheduler.ledger.retention import Retention
from tests.conftest import make_settings
from tests.workers.batch_harness import enqueue_jobs, make_ctx, run_batch
from tests.workers.conftest import FAST_HTTP, openai_settings
from tests.workers.receiver import running_receiver
from workers.http import build_client
from workers.tasks.ingest import ingest_batch
from workers.webhooks import Deliverer
from workers.webhooks import build_client as webhook_client

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TTL_S = 60
# A segment that is an id (job, batch, delivery, provider batch), a day or a number: the family ends there.
_ID = re.compile(r"^(job_|bat_|wh_|msg_|batch_|\d)")


def family(key: str) -> str:
    """The key's name up to its first id; a lane's hash tag counts as one segment."""
    name = re.sub(r"\{[^}]*\}", "{lane}", key)
    parts = []
    for part in name.split(":"):
        if _ID.match(part):
            break
        parts.append(part)
    return ":".join(parts)


async def families(redis: Redis) -> Counter[str]:
    return Counter([family(k.decode()) async for k in redis.scan_iter(match=f"{keys.PREFIX}:*", count=1000)])


def test_family_cuts_at_the_first_id():
    assert family("bs:job:job_01ABC") == "bs:job"
    assert family("bs:batch:bat_01X:jobs") == "bs:batch"
    assert family("bs:webhook:wh_job_01") == "bs:webhook"
    assert family("bs:agg:2026-11-30:t:acme:all") == "bs:agg"
    assert family("bs:lane:{openai:m:/v1/chat/completions}:queue") == "bs:lane:{lane}:queue"
    assert family("bs:tenant:acme:status:succeeded") == "bs:tenant:acme:status:succeeded"


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with build_client(FAST_HTTP) as client:
        yield client


def soak_settings(redis_url: str, url: str) -> Settings:
    return make_settings(
        redis_url,
        providers={"openai": openai_settings(url)},
        tenants={"acme": TenantSettings(api_key="acme-key", webhook_secrets=[SECRET])},
        slo=SloSettings(prior_turnaround_s=1.0),
        webhook_allowlist=["127.0.0.0/8"],
        webhooks=WebhookSettings(retry_schedule_s=[1], jitter=0),
        retention={"job_ttl_s": TTL_S, "trim_chunk": 16},
    )


async def pipeline_round(ctx: dict[str, Any], settings: Settings, n: int, receiver_url: str) -> list[str]:
    """``n`` jobs through a batch at the emulator, ingested, one cancelled, webhooks delivered."""
    ids = await enqueue_jobs(ctx["ledger"], n, callback_url=receiver_url)
    bid = await run_batch(ctx)
    await ctx["ledger"].cancel(ids[-1], int(time.time() * 1000))
    await ingest_batch(ctx, bid)
    async with webhook_client(settings) as client:
        await Deliverer(settings, ctx["redis"], client).run()
    return ids


async def test_no_key_family_grows_with_the_jobs_run(redis_url, redis, emulator: EmulatorControl, http):
    settings = soak_settings(redis_url, emulator.url)
    ctx = await make_ctx(settings, http)
    ctx["ledger"].job_ttl_s = TTL_S
    retention = Retention(redis, settings)
    assert await families(redis) == Counter()
    rounds: list[Counter[str]] = []
    with running_receiver(secrets=(SECRET,)) as rx:
        for n in (5, 40):
            ids = await pipeline_round(ctx, settings, n, rx.url)
            during = await families(redis)
            # The run's own records are there until retention: what the trim must take away.
            assert during["bs:job"] >= n
            assert during["bs:webhook"] >= n
            assert during["bs:batch"] >= 2
            # A trim at a chosen time past retention (no sleeping): what is left no longer scales.
            await retention.trim(int(time.time() * 1000) + (TTL_S + 5) * 1000)
            assert not await redis.exists(*[keys.job(i) for i in ids])
            rounds.append(await families(redis))
    assert len(rx.requests) == 5 + 40
    first, second = rounds
    assert second == first
    for gone in ("bs:job", "bs:result", "bs:webhook", "bs:batch", "bs:slo:batch"):
        assert gone not in second, gone
