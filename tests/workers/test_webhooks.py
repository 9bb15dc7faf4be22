"""Completion webhooks: signatures the reference library verifies, retries, 410, timeouts, redirects, SSRF, leases."""

from __future__ import annotations

import asyncio
import email.utils
import io
import random
import time
import tracemalloc
import zlib
from collections.abc import Awaitable, Coroutine
from typing import TypeVar

import orjson
import pytest
from pydantic import ValidationError
from redis.asyncio import Redis
from standardwebhooks import Webhook
from structlog.testing import capture_logs

from config.logging import configure_logging
from config.settings import Settings, TenantSettings, WebhookSettings
from scheduler.ledger import keys
from scheduler.ledger.clock import ManualClock, server_ms
from scheduler.ledger.ids import job_id
from scheduler.ledger.jobs import VIEW_FIELDS, JobRecord, NewJob, view_of_fields
from scheduler.ledger.ledger import Finish, Ledger
from scheduler.planning.webhook_dispatch import url_hash
from tests.conftest import make_settings
from tests.workers.receiver import Answer, BodyPlan, running_receiver
from workers.webhook_slots import Limits, Slots
from workers.webhooks import _KNOWN_URLS as KNOWN
from workers.webhooks import Deliverer, DeliveryReport, KnownUrls, build_client, capacity, sign

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
T = TypeVar("T")
NEW_SECRET = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"  # base64 of 24 letters


def virtual_clock() -> ManualClock:
    """The worker's injected clock, moved by the test; it starts at the real time only so that
    dates the receiver sends (``Retry-After``) mean the same on both clocks."""
    return ManualClock(int(time.time() * 1000))


def hook_settings(redis_url: str, *, allow: bool = True, **webhooks: object) -> Settings:
    base: dict[str, object] = {"retry_schedule_s": [1, 2, 4], "jitter": 0.0, "timeout_s": 2.0}
    base.update(webhooks)
    return make_settings(
        redis_url,
        webhooks=WebhookSettings(**base),
        webhook_allowlist=["127.0.0.0/8"] if allow else [],
        tenants={
            "acme": TenantSettings(api_key="acme-key", webhook_secrets=[SECRET, NEW_SECRET]),
            "globex": TenantSettings(api_key="globex-key"),
        },
    )


async def finished_job(
    ledger: Ledger, url: str, *, tenant: str = "acme", result: bytes = b'{"ok": 1}'
) -> str:
    """A job that went through the sync lane and succeeded, so its delivery record exists."""
    jid = job_id()
    now = int(time.time() * 1000) - 60_000  # a minute ago, so it is due at any test clock
    job = NewJob(
        jid,
        tenant,
        "openai",
        "/v1/chat/completions",
        "gpt-4o-mini",
        b'{"model":"gpt-4o-mini"}',
        now + 60_000,
        now,
        callback_url=url,
        state="sync",
    )
    await ledger.enqueue(job)
    assert await ledger.finish(
        [Finish(jid, "succeeded", "sync", from_states=("sync",), result=result)], now
    ) == ["ok"]
    return jid


async def delivery(redis: Redis, jid: str) -> dict[str, str]:
    raw = await redis.hgetall(keys.webhook_delivery(f"wh_{jid}"))  # type: ignore[misc]
    return {k.decode(): v.decode() for k, v in raw.items()}


@pytest.fixture
def ledger(redis: Redis) -> Ledger:
    return Ledger(redis)


def test_known_answer_vector() -> None:
    """The upstream Standard Webhooks vector (reference §1.2)."""
    header = sign([SECRET], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert header == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_every_active_secret_signs_and_each_verifies_alone() -> None:
    body, ts = b'{"a": 1}', int(time.time())
    header = sign([SECRET, NEW_SECRET], "msg_x", ts, body)
    assert len(header.split(" ")) == 2
    for secret in (SECRET, NEW_SECRET):
        Webhook(secret).verify(
            body, {"webhook-id": "msg_x", "webhook-timestamp": str(ts), "webhook-signature": header}
        )


async def run(
    settings: Settings, redis: Redis, clock: ManualClock, now_ms: int | None = None
) -> dict[str, int]:
    """One deliver_webhooks run on the worker's clock ``clock`` (``now_ms``: a worker whose own "now" differs)."""
    async with build_client(settings) as client:
        report = await Deliverer(settings, redis, client, clock=clock, rng=random.Random(1)).run(now_ms)
    return {k: getattr(report, k) for k in ("claimed", "delivered", "retry", "dead", "disabled")}


async def test_a_delivery_carries_the_job_view_and_verified_signatures(redis_url, redis, ledger) -> None:
    settings = hook_settings(redis_url)
    with running_receiver(secrets=(SECRET, NEW_SECRET)) as rx:
        jid = await finished_job(ledger, rx.url, result=b'{"id": "chatcmpl-1", "choices": []}')
        report = await run(settings, redis, virtual_clock())
    assert report["delivered"] == 1
    [req] = rx.requests
    assert req.verified
    assert req.headers["webhook-id"] == f"msg_{jid}"
    doc = orjson.loads(req.body)
    assert doc["type"] == "job.succeeded"
    assert doc["data"]["id"] == jid
    assert doc["data"]["status"] == "succeeded"
    assert doc["data"]["result"] == {"id": "chatcmpl-1", "choices": []}
    record = await delivery(redis, jid)
    assert record["status"] == "delivered"
    assert record["attempts"] == "1"
    assert await redis.zcard(keys.WEBHOOKS_DUE) == 0


async def test_three_500s_then_200_delivers_on_the_fourth_attempt_under_one_id(
    redis_url, redis, ledger
) -> None:
    settings = hook_settings(redis_url)
    clock = virtual_clock()

    def answer(n: int) -> Answer:
        return (500 if n < 3 else 200), {}, 0.0

    with running_receiver(answer, secrets=(SECRET,)) as rx:
        jid = await finished_job(ledger, rx.url)
        for _ in range(4):
            await run(settings, redis, clock)
            clock.advance(5)  # past the longest scheduled delay (4 s)
    assert [r.verified for r in rx.requests] == [True] * 4
    assert {r.headers["webhook-id"] for r in rx.requests} == {f"msg_{jid}"}
    record = await delivery(redis, jid)
    assert record["status"] == "delivered"
    assert record["attempts"] == "4"


async def test_each_attempt_is_logged_for_the_timeline_and_the_record_says_how_it_ended(
    redis_url, redis, ledger
) -> None:
    """The settle's one write per item: attempts, last status and error, next time, attempt_log."""
    settings = hook_settings(redis_url)
    clock = virtual_clock()

    def answer(n: int) -> Answer:
        return (500 if n < 1 else 200), {}, 0.0

    with running_receiver(answer, secrets=(SECRET,)) as rx:
        jid = await finished_job(ledger, rx.url)
        first_ms = clock.ms
        await run(settings, redis, clock)
        failing = await delivery(redis, jid)
        clock.advance(5)
        await run(settings, redis, clock)
    # The first entry is written without decoding a log: the bytes a JSON encoder writes for it.
    assert failing["attempt_log"] == f'[[{first_ms},500,"HTTP 500"]]'
    assert failing["attempts"] == "1"
    assert failing["status"] == "failing"
    assert (failing["last_status"], failing["last_error"]) == ("500", "HTTP 500")
    assert int(failing["next_ms"]) == first_ms + 1000
    assert "lease" not in failing
    assert "lease_until" not in failing
    record = await delivery(redis, jid)
    assert orjson.loads(record["attempt_log"]) == [[first_ms, 500, "HTTP 500"], [clock.ms, 200, ""]]
    assert record["attempts"] == "2"
    assert (record["status"], record["last_status"], record["last_error"]) == ("delivered", "200", "")
    assert (record["delivered_ms"], record["next_ms"], record["last_attempt_ms"]) == (
        str(clock.ms),
        "",
        str(clock.ms),
    )
    assert "lease" not in record
    metrics = await redis.hgetall(keys.METRICS_GLOBAL)  # type: ignore[misc]
    assert metrics[b"webhook:retry"] == b"1"
    assert metrics[b"webhook:delivered"] == b"1"


async def test_what_ended_is_settled_in_the_step_of_the_next_claim(redis_url, redis, ledger) -> None:
    """Two held at a time: each claim after the first settles the sends that ended before it."""
    settings = hook_settings(redis_url, claim_batch=2, concurrency=2)
    clock = virtual_clock()
    with running_receiver(lambda n: ((500 if n == 0 else 200), {}, 0.0)) as rx:
        jids = [await finished_job(ledger, rx.url) for _ in range(5)]
        report = await run(settings, redis, clock)
    assert report == {"claimed": 5, "delivered": 4, "retry": 1, "dead": 0, "disabled": 0}
    records = [await delivery(redis, j) for j in jids]
    assert sorted(r["status"] for r in records) == ["delivered"] * 4 + ["failing"]
    for r in records:
        assert "lease" not in r
        assert r["attempts"] == "1"
        assert int(r["last_attempt_ms"]) == clock.ms
        if r["status"] == "failing":
            assert int(r["next_ms"]) == clock.ms + 1000
            assert r["attempt_log"] == f'[[{clock.ms},500,"HTTP 500"]]'
        else:
            assert r["attempt_log"] == f'[[{clock.ms},200,""]]'
    assert await redis.zcard(keys.WEBHOOKS_DUE) == 1
    metrics = await redis.hgetall(keys.METRICS_GLOBAL)  # type: ignore[misc]
    assert (metrics[b"webhook:delivered"], metrics[b"webhook:retry"]) == (b"4", b"1")


@pytest.mark.parametrize("level", ["DEBUG", "INFO"])
async def test_a_delivered_send_is_logged_at_debug_when_debug_is_on(redis_url, redis, ledger, level) -> None:
    """The debug line is skipped only where the configured level filter would drop it anyway."""
    settings = hook_settings(redis_url)
    out = io.StringIO()
    configure_logging(level, "json", stream=out)
    with running_receiver() as rx:
        jid = await finished_job(ledger, rx.url)
        assert (await run(settings, redis, virtual_clock()))["delivered"] == 1
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    delivered = [line for line in lines if line.get("event") == "webhook.delivered"]
    if level == "DEBUG":
        assert [(d["delivery_id"], d["status"]) for d in delivered] == [(f"wh_{jid}", 200)]
    else:
        assert delivered == []
    with capture_logs() as captured:  # a configuration without the level filter sees every event
        with running_receiver() as rx:
            await finished_job(ledger, rx.url)
            await run(settings, redis, virtual_clock())
    assert [e["event"] for e in captured if e["event"] == "webhook.delivered"] == ["webhook.delivered"]


async def test_one_run_delivers_a_tenants_whole_backlog_through_its_hold(redis_url, redis, ledger) -> None:
    """A backlog larger than the tenant's hold (4 here) is claimed in turns as its sends end, in one run."""
    settings = hook_settings(redis_url, per_tenant_concurrency=2)
    with running_receiver(lambda n: (200, {}, 0.01)) as rx:
        jids = [await finished_job(ledger, rx.url) for _ in range(11)]
        report = await run(settings, redis, virtual_clock())
    assert (report["claimed"], report["delivered"]) == (11, 11)
    assert len(rx.requests) == 11
    assert {(await delivery(redis, j))["status"] for j in jids} == {"delivered"}


async def test_nothing_is_sent_before_the_next_attempt_is_due(redis_url, redis, ledger) -> None:
    settings = hook_settings(redis_url)
    clock = virtual_clock()
    with running_receiver(lambda n: (500, {}, 0.0)) as rx:
        jid = await finished_job(ledger, rx.url)
        await run(settings, redis, clock)
        clock.advance(0.5)  # the first retry waits 1 s
        assert (await run(settings, redis, clock))["claimed"] == 0
    assert len(rx.requests) == 1
    assert (await delivery(redis, jid))["status"] == "failing"


async def test_after_the_last_attempt_the_delivery_is_dead_lettered(redis_url, redis, ledger) -> None:
    settings = hook_settings(redis_url, retry_schedule_s=[1, 1])
    clock = virtual_clock()
    with running_receiver(lambda n: (503, {}, 0.0)) as rx:
        jid = await finished_job(ledger, rx.url)
        for _ in range(4):
            await run(settings, redis, clock)
            clock.advance(2)
    assert len(rx.requests) == 3  # the first attempt and two retries
    record = await delivery(redis, jid)
    assert record["status"] == "dead"
    assert record["last_status"] == "503"
    assert await redis.zscore(keys.WEBHOOKS_DEAD, f"wh_{jid}") is not None
    assert await redis.zscore(keys.WEBHOOKS_DUE, f"wh_{jid}") is None


async def test_410_disables_the_url(redis_url, redis, ledger) -> None:
    settings = hook_settings(redis_url)
    with running_receiver(lambda n: (410, {}, 0.0)) as rx:
        first = await finished_job(ledger, rx.url)
        await run(settings, redis, virtual_clock())
        second = await finished_job(ledger, rx.url)
        await run(settings, redis, virtual_clock())
    assert len(rx.requests) == 1  # the second event never went out
    assert (await delivery(redis, first))["status"] == "disabled"
    assert (await delivery(redis, second))["status"] == "disabled"
    assert await redis.exists(keys.disabled_url(url_hash("acme", rx.url)))


async def test_a_disabled_url_is_not_sent_to_whether_or_not_the_worker_has_seen_it(
    redis_url, redis, ledger
) -> None:
    """The 410 mark is read after the claim for a URL new to the process, in the claim for one it knows."""
    settings = hook_settings(redis_url)
    with running_receiver() as rx:
        url = f"{rx.url}?fresh={job_id()}"  # never seen by this process
        await redis.set(keys.disabled_url(url_hash("acme", url)), 1)
        first = await finished_job(ledger, url)
        assert (await run(settings, redis, virtual_clock()))["disabled"] == 1
        assert ("acme", url) in KNOWN._hashes  # now known: the next claim reads its mark itself
        second = await finished_job(ledger, url)
        assert (await run(settings, redis, virtual_clock()))["disabled"] == 1
        await redis.delete(keys.disabled_url(url_hash("acme", url)))  # a replay lifts the mark
        third = await finished_job(ledger, url)
        assert (await run(settings, redis, virtual_clock()))["delivered"] == 1
    assert len(rx.requests) == 1
    assert [(await delivery(redis, j))["status"] for j in (first, second, third)] == [
        "disabled",
        "disabled",
        "delivered",
    ]


def test_known_urls_keep_the_latest_seen_and_their_hashes() -> None:
    known = KnownUrls(2)
    assert known.hash("acme", "https://a") == url_hash("acme", "https://a")
    known.hash("acme", "https://b")
    known.hash("acme", "https://a")  # seen again: the latest
    known.hash("globex", "https://a")  # evicts acme's b, the least recently seen
    assert known.pairs() == [
        "acme\nhttps://a",
        url_hash("acme", "https://a"),
        "globex\nhttps://a",
        url_hash("globex", "https://a"),
    ]


async def test_a_410_disables_the_url_for_its_tenant_only(redis_url, redis, ledger) -> None:
    """Another tenant using the same receiver URL keeps getting its events."""
    settings = hook_settings(redis_url)
    settings.tenants["globex"] = TenantSettings(api_key="globex-key", webhook_secrets=[SECRET])
    with running_receiver(lambda n: (410, {}, 0.0) if n == 0 else (200, {}, 0.0)) as rx:
        gone = await finished_job(ledger, rx.url)
        await run(settings, redis, virtual_clock())
        other = await finished_job(ledger, rx.url, tenant="globex")
        await run(settings, redis, virtual_clock())
    assert (await delivery(redis, gone))["status"] == "disabled"
    assert (await delivery(redis, other))["status"] == "delivered"
    assert len(rx.requests) == 2


async def test_a_timeout_is_retried(redis_url, redis, ledger) -> None:
    settings = hook_settings(redis_url, timeout_s=0.2)
    clock = virtual_clock()
    with running_receiver(lambda n: (200, {}, 1.0 if n == 0 else 0.0)) as rx:
        jid = await finished_job(ledger, rx.url)
        await run(settings, redis, clock)
        record = await delivery(redis, jid)
        assert record["status"] == "failing"
        assert "timeout" in record["last_error"]
        clock.advance(2)
        await run(settings, redis, clock)
    assert (await delivery(redis, jid))["status"] == "delivered"


async def test_a_redirect_is_not_followed(redis_url, redis, ledger) -> None:
    settings = hook_settings(redis_url)

    with running_receiver(lambda n: (302, {"location": "/elsewhere"}, 0.0)) as rx:
        jid = await finished_job(ledger, rx.url)
        await run(settings, redis, virtual_clock())
    assert [r.path for r in rx.requests] == ["/hook"]
    record = await delivery(redis, jid)
    assert record["status"] == "failing"
    assert record["last_status"] == "302"


async def test_retry_after_is_honoured(redis_url, redis, ledger) -> None:
    settings = hook_settings(redis_url, retry_schedule_s=[1, 60])
    clock = virtual_clock()
    with running_receiver(lambda n: (503, {"retry-after": "30"}, 0.0)) as rx:
        jid = await finished_job(ledger, rx.url)
        await run(settings, redis, clock)
    score = await redis.zscore(keys.WEBHOOKS_DUE, f"wh_{jid}")
    assert score is not None
    assert score >= int((clock.seconds + 30) * 1000)
    assert len(rx.requests) == 1


async def test_loopback_is_refused_without_the_allowlist(redis_url, redis, ledger) -> None:
    settings = hook_settings(redis_url, allow=False)
    with running_receiver() as rx:
        jid = await finished_job(ledger, rx.url)
        await run(settings, redis, virtual_clock())
    assert rx.requests == []
    record = await delivery(redis, jid)
    assert record["status"] == "dead"
    assert "refused" in record["last_error"]


async def test_a_tenant_without_secrets_gets_nothing_unsigned(redis_url, redis, ledger) -> None:
    settings = hook_settings(redis_url)
    with running_receiver() as rx:
        jid = await finished_job(ledger, rx.url, tenant="globex")
        await run(settings, redis, virtual_clock())
    assert rx.requests == []
    assert "no webhook secret" in (await delivery(redis, jid))["last_error"]


async def claim(
    settings: Settings,
    redis: Redis,
    clock: ManualClock,
    *,
    token: str = "other-worker",
    lease_ms: int = 30_000,
    most: int = 10,
    room: int = 10,
    rooms: dict[str, int] | None = None,
) -> tuple[list[str], int]:
    """Claim at ``clock``'s now as another worker would (which then dies, or is still sending)."""
    async with build_client(settings) as client:
        script = Deliverer(settings, redis, client)._claim
        ids, left = await script(
            keys=[keys.WEBHOOKS_DUE],
            args=[
                clock.ms,
                lease_ms,
                most,
                token,
                keys.webhook_delivery(""),
                room,
                orjson.dumps(rooms or {}),
                most * 4,
                clock.ms,
            ],
        )
    return sorted(i.decode() for i in ids), left


async def test_a_dead_workers_claims_come_back_after_the_lease(redis_url, redis, ledger) -> None:
    settings = hook_settings(redis_url)
    clock = virtual_clock()
    with running_receiver() as rx:
        jid = await finished_job(ledger, rx.url)
        assert (await claim(settings, redis, clock, lease_ms=50))[0] == [f"wh_{jid}"]
        clock.advance(1)  # past the 50 ms lease; its end is the delivery's score: due again for any worker
        assert (await run(settings, redis, clock))["delivered"] == 1
    assert len(rx.requests) == 1
    assert (await delivery(redis, jid))["status"] == "delivered"


async def test_a_worker_whose_clock_runs_ahead_leaves_live_claims_alone(redis_url, redis, ledger) -> None:
    """Leases run on the shared clock (Redis TIME in production), not a worker's own "now": a
    worker 60 s ahead sees the score as due, yet claims nothing."""
    settings = hook_settings(redis_url)
    clock = virtual_clock()
    with running_receiver() as rx:
        jid = await finished_job(ledger, rx.url)
        assert (await claim(settings, redis, clock, lease_ms=30_000))[0] == [f"wh_{jid}"]
        assert (await run(settings, redis, clock, now_ms=clock.ms + 60_000))["claimed"] == 0
    assert rx.requests == []
    assert (await delivery(redis, jid))["lease"] == "other-worker"


async def test_on_the_servers_clock_the_scripts_read_it_themselves(redis_url, redis, ledger) -> None:
    """Production's clock (no injected one): the claim's lease and the settle's stamps and retry
    time are the Redis server's TIME, read inside each script, and a live lease on it still holds."""
    settings = hook_settings(redis_url, lease_s=30.0)
    with running_receiver(lambda n: (500, {}, 0.0)) as rx:
        jid = await finished_job(ledger, rx.url)
        before = await server_ms(redis)
        async with build_client(settings) as client:
            report = await Deliverer(settings, redis, client, rng=random.Random(1)).run()
        after = await server_ms(redis)
        assert (report.claimed, report.retry) == (1, 1)
        record = await delivery(redis, jid)
        assert before <= int(record["last_attempt_ms"]) <= after
        assert before + 1000 <= int(record["next_ms"]) <= after + 1000  # the first step: 1 s
        assert await redis.zscore(keys.WEBHOOKS_DUE, f"wh_{jid}") == int(record["next_ms"])
        # A claim another worker holds on the server's clock is left alone by a worker far ahead.
        await asyncio.sleep(1.1)
        assert (await claim(settings, redis, ManualClock(after + 2000), lease_ms=30_000))[0] == [f"wh_{jid}"]
        held = await delivery(redis, jid)
        async with build_client(settings) as client:
            ahead = await Deliverer(settings, redis, client).run(now_ms=after + 120_000)
        assert ahead.claimed == 0
    assert len(rx.requests) == 1
    assert (await delivery(redis, jid))["lease"] == held["lease"] == "other-worker"


async def test_one_claim_takes_at_most_each_tenants_room(redis_url, redis, ledger) -> None:
    settings = hook_settings(redis_url)
    url = "http://127.0.0.1:9/hook"
    acme = {f"wh_{await finished_job(ledger, url)}" for _ in range(3)}
    globex = {f"wh_{await finished_job(ledger, url, tenant='globex')}" for _ in range(3)}
    clock = virtual_clock()
    first, left = await claim(settings, redis, clock, room=2, rooms={"globex": 1})
    assert len(acme & set(first)) == 2
    assert len(globex & set(first)) == 1
    assert left == 1  # the rest is due but had no room
    rest, left = await claim(settings, redis, clock, room=5, token="another")
    assert set(rest) == (acme | globex) - set(first)  # live claims are skipped
    assert left == 0


async def test_fan_out_is_concurrent(redis_url, redis, ledger) -> None:
    """Many deliveries overlap in flight instead of waiting on one HTTP call at a time."""
    settings = hook_settings(redis_url, concurrency=20, claim_batch=40)
    with running_receiver(lambda n: (200, {}, 0.05)) as rx:
        ids = [await finished_job(ledger, rx.url) for _ in range(100)]
        report = await run(settings, redis, virtual_clock())
    assert report["delivered"] == 100
    assert {r.headers["webhook-id"] for r in rx.requests} == {f"msg_{j}" for j in ids}
    assert 1 < rx.peak <= 20


async def test_every_attempt_carries_its_own_timestamp_under_the_same_id(redis_url, redis, ledger) -> None:
    settings = hook_settings(redis_url, retry_schedule_s=[60, 60])
    """The timestamp is the wall time of each send, whatever the worker's clock says: receivers
    check it against their own clocks."""
    clock = virtual_clock()
    sent_within: list[tuple[int, int]] = []
    with running_receiver(lambda n: (500 if n < 2 else 200, {}, 0.0), secrets=(SECRET,)) as rx:
        jid = await finished_job(ledger, rx.url)
        for _ in range(3):
            before = int(time.time())
            await run(settings, redis, clock)
            sent_within.append((before, int(time.time())))
            clock.advance(61)  # the virtual clock runs 183 s ahead of the wall by the end
    stamps = [int(r.headers["webhook-timestamp"]) for r in rx.requests]
    assert len(stamps) == 3
    assert all(lo <= ts <= hi for ts, (lo, hi) in zip(stamps, sent_within, strict=True))
    assert {r.headers["webhook-id"] for r in rx.requests} == {f"msg_{jid}"}


async def test_retry_after_as_an_http_date_is_honoured(redis_url, redis, ledger) -> None:
    settings = hook_settings(redis_url, retry_schedule_s=[1, 600])
    clock = virtual_clock()
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    with running_receiver(lambda n: (503, {"retry-after": when}, 0.0)) as rx:
        jid = await finished_job(ledger, rx.url)
        await run(settings, redis, clock)
    score = await redis.zscore(keys.WEBHOOKS_DUE, f"wh_{jid}")
    assert score is not None
    assert score >= int((clock.seconds + 100) * 1000)  # the date's 120 s, not the schedule's 1 s
    assert len(rx.requests) == 1


async def test_410_disables_only_that_url(redis_url, redis, ledger) -> None:
    settings = hook_settings(redis_url)
    with running_receiver(lambda n: (410, {}, 0.0)) as gone, running_receiver() as alive:
        await finished_job(ledger, gone.url)
        await run(settings, redis, virtual_clock())
        other = await finished_job(ledger, alive.url)
        report = await run(settings, redis, virtual_clock())
    assert report["delivered"] == 1
    assert (await delivery(redis, other))["status"] == "delivered"


async def test_a_410_in_a_run_stops_the_sends_to_that_url_it_already_claimed(
    redis_url, redis, ledger
) -> None:
    """Deliveries claimed with the one that got 410, waiting for the URL's slot behind it, are not
    sent; a delivery to the URL claimed after a replay lifted the mark is."""
    settings = hook_settings(redis_url, per_url_concurrency=1)
    with running_receiver(lambda n: (410, {}, 0.0) if n == 0 else (200, {}, 0.0)) as rx:
        jids = [await finished_job(ledger, rx.url) for _ in range(3)]
        report = await run(settings, redis, virtual_clock())
        assert (report["claimed"], report["disabled"]) == (3, 3)
        assert len(rx.requests) == 1
        assert {(await delivery(redis, j))["status"] for j in jids} == {"disabled"}
        await redis.delete(keys.disabled_url(url_hash("acme", rx.url)))  # what a replay lifts
        later = await finished_job(ledger, rx.url)
        assert (await run(settings, redis, virtual_clock()))["delivered"] == 1
    assert len(rx.requests) == 2
    assert (await delivery(redis, later))["status"] == "delivered"


async def test_a_job_whose_result_expired_still_gets_a_signed_event(redis_url, redis, ledger) -> None:
    """Retention ended before the (replayed) delivery: the event goes out with the job's status,
    usage and cost and a null result, as GET /v1/jobs/{id} shows it then."""
    settings = hook_settings(redis_url)
    with running_receiver(secrets=(SECRET,)) as rx:
        jid = await finished_job(ledger, rx.url)
        await redis.delete(keys.result(jid))
        assert (await run(settings, redis, virtual_clock()))["delivered"] == 1
    [req] = rx.requests
    assert req.verified
    doc = orjson.loads(req.body)
    assert doc["type"] == "job.succeeded"
    assert doc["data"]["status"] == "succeeded"
    assert doc["data"]["result"] is None


async def test_a_tenant_removed_from_settings_gets_nothing_sent(redis_url, redis, ledger) -> None:
    settings = hook_settings(redis_url)
    with running_receiver() as rx:
        jid = await finished_job(ledger, rx.url, tenant="initech")  # not (or no longer) configured
        assert (await run(settings, redis, virtual_clock()))["dead"] == 1
    assert rx.requests == []
    record = await delivery(redis, jid)
    assert record["status"] == "dead"
    assert record["last_error"]


@pytest.mark.parametrize("bad", ["whsec_a", "whsec_abc!", "whsec_", "whsec_not base64 at all"])
def test_a_secret_that_cannot_sign_is_refused_when_settings_load(bad: str) -> None:
    """Otherwise every delivery of the tenant crashes in sign() and is retried for days."""
    with pytest.raises(ValidationError, match="webhook_secrets") as caught:
        TenantSettings(api_key="k", webhook_secrets=[SECRET, bad])
    message = str(caught.value)
    assert SECRET not in message
    assert "not base64 at all" not in message


def test_every_valid_secret_form_loads_and_signs() -> None:
    unpadded = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWQ"  # 25 bytes, padding left off
    tenant = TenantSettings(api_key="k", webhook_secrets=[SECRET, unpadded])
    header = sign([s.get_secret_value() for s in tenant.webhook_secrets], "msg_x", 1, b"{}")
    assert len(header.split(" ")) == 2
    Webhook(unpadded).verify(
        b"{}",
        {
            "webhook-id": "msg_x",
            "webhook-timestamp": str(int(time.time())),
            "webhook-signature": sign([unpadded], "msg_x", int(time.time()), b"{}"),
        },
    )


HUGE = BodyPlan(b"x" * 65536, 300 * 1024 * 1024 // 65536)  # 300 MB, as fast as the client reads
TRICKLE = BodyPlan(b"x", 100_000, 0.05)  # a byte every 50 ms: each read well inside any read timeout


def peak_mb(work: Awaitable[T]) -> Coroutine[None, None, tuple[T, float]]:
    """Run ``work`` under tracemalloc; its result and the peak of Python memory it allocated (MB)."""

    async def measured() -> tuple[T, float]:
        tracemalloc.start()
        try:
            result = await work
            return result, tracemalloc.get_traced_memory()[1] / 2**20
        finally:
            tracemalloc.stop()

    return measured()


async def test_a_300_mb_answer_costs_a_few_kilobytes(redis_url, redis, ledger) -> None:
    settings = hook_settings(redis_url, timeout_s=30.0)
    with running_receiver(lambda n: (500, {}, 0.0), plan=HUGE) as rx:
        jid = await finished_job(ledger, rx.url)
        report, peak = await peak_mb(run(settings, redis, virtual_clock()))
    assert report["retry"] == 1
    assert peak < 20
    assert rx.body_bytes_sent < 50 * 2**20  # the client hung up long before the end
    record = await delivery(redis, jid)
    assert record["status"] == "failing"
    assert record["last_status"] == "500"
    assert "larger than 4096 bytes" in record["last_error"]


async def test_a_trickling_receiver_is_cut_off_at_the_send_deadline(redis_url, redis, ledger) -> None:
    """Every read gets its byte in time; the deadline over the whole send still ends it."""
    settings = hook_settings(redis_url, timeout_s=0.5)
    with running_receiver(lambda n: (500, {}, 0.0), plan=TRICKLE) as rx:
        jid = await finished_job(ledger, rx.url)
        report, peak = await peak_mb(run(settings, redis, virtual_clock()))
    assert report["retry"] == 1
    assert peak < 20
    assert rx.body_bytes_sent < TRICKLE.count
    record = await delivery(redis, jid)
    assert record["status"] == "failing"
    assert "timeout" in record["last_error"]
    assert "deadline" in record["last_error"]


async def test_hostile_receivers_do_not_hold_back_other_tenants(redis_url, redis, ledger) -> None:
    """One claim pass: the hostile tenant's sends fail on deadline or size, everyone else's succeed."""
    settings = hook_settings(redis_url, timeout_s=1.0, concurrency=4, per_tenant_concurrency=2)
    settings.tenants["globex"] = TenantSettings(api_key="globex-key", webhook_secrets=[SECRET])
    with (
        running_receiver(lambda n: (500, {}, 0.0), plan=TRICKLE) as slow,
        running_receiver(lambda n: (500, {}, 0.0), plan=HUGE) as huge,
        running_receiver(secrets=(SECRET,)) as fine,
    ):
        hostile = [await finished_job(ledger, slow.url) for _ in range(3)]
        hostile += [await finished_job(ledger, huge.url) for _ in range(2)]
        others = [await finished_job(ledger, fine.url, tenant="globex") for _ in range(20)]
        report = await run(settings, redis, virtual_clock())
    assert report["delivered"] == 20
    assert report["retry"] == 5
    for jid in others:
        assert (await delivery(redis, jid))["status"] == "delivered"
    reasons = [(await delivery(redis, jid))["last_error"] for jid in hostile]
    assert sum("deadline" in r for r in reasons) == 3
    assert sum("larger than" in r for r in reasons) == 2


async def test_sends_in_flight_stay_within_the_tenant_and_url_limits(redis_url, redis, ledger) -> None:
    settings = hook_settings(redis_url, concurrency=20, per_tenant_concurrency=3, per_url_concurrency=2)
    with (
        running_receiver(lambda n: (200, {}, 0.05)) as one,
        running_receiver(lambda n: (200, {}, 0.05)) as two,
    ):
        for _ in range(10):
            await finished_job(ledger, one.url)
            await finished_job(ledger, two.url)
        report = await run(settings, redis, virtual_clock())
    assert report["delivered"] == 20
    assert one.peak <= 2
    assert two.peak <= 2
    with running_receiver(lambda n: (200, {}, 0.05)) as shared:
        for _ in range(10):
            await finished_job(ledger, shared.url)
        settings = hook_settings(redis_url, concurrency=20, per_tenant_concurrency=3, per_url_concurrency=20)
        assert (await run(settings, redis, virtual_clock()))["delivered"] == 10
    assert shared.peak <= 3


async def test_a_send_that_could_outlive_its_lease_is_handed_back_unsent(redis_url, redis, ledger) -> None:
    """One slot, a 0.6 s deadline, a 1 s lease: the second send could not end in time, so it never starts.

    The outbox's monotonic clock moves a whole deadline per send the receiver saw, so how fast the
    machine claims and starts sends does not count."""
    settings = hook_settings(redis_url, timeout_s=0.6, lease_s=1.0, per_tenant_concurrency=1)
    with running_receiver(lambda n: (500, {}, 0.0), plan=TRICKLE) as rx:
        first = await finished_job(ledger, rx.url)
        second = await finished_job(ledger, rx.url)
        clock = virtual_clock()
        async with build_client(settings) as client:
            deliverer = Deliverer(
                settings, redis, client, clock=clock, monotonic=lambda: 0.6 * len(rx.requests)
            )
            ids, left = await deliverer._claim_and_start(clock.ms, 10, in_flight := {})
            assert (ids, left) == (2, False)
            outcomes = await asyncio.gather(*in_flight)
    assert sorted(o.action for o in outcomes) == ["released", "retry"]
    assert len(rx.requests) == 1
    released = next(o.id for o in outcomes if o.action == "released")
    assert released in (f"wh_{first}", f"wh_{second}")
    await deliverer._apply(outcomes, clock.ms, DeliveryReport())
    record = await redis.hgetall(keys.webhook_delivery(released))
    assert b"lease" not in record
    assert b"attempts" not in record or record[b"attempts"] == b"0"
    assert await redis.zscore(keys.WEBHOOKS_DUE, released) == clock.ms  # due again at once


async def test_a_delivery_reads_no_request_body(redis_url, redis, ledger) -> None:
    """The job's request body (here 8 MB) is never loaded: only the fields its message shows."""
    settings = hook_settings(redis_url)
    with running_receiver() as rx:
        jid = await finished_job(ledger, rx.url)
        await redis.hset(keys.job(jid), "body", b"x" * (8 * 2**20))  # type: ignore[misc]
        report, peak = await peak_mb(run(settings, redis, virtual_clock()))
    assert report["delivered"] == 1
    assert peak < 4
    assert orjson.loads(rx.requests[0].body)["data"]["id"] == jid


def test_a_lease_no_longer_than_the_send_deadline_is_refused() -> None:
    with pytest.raises(ValidationError, match="lease_s"):
        WebhookSettings(timeout_s=30, lease_s=30)


@pytest.mark.parametrize(
    ("timeout_s", "lease_s", "concurrency", "held"),
    [
        (15, 60, 64, 192),  # the defaults: three rounds of 64 slowest sends fit in a lease
        (1, 2.5, 2, 4),
        (10, 10.5, 8, 8),  # one round fits, with a quarter second to spare
        (0.1, 60, 64, 500),  # claim_batch bounds it
    ],
)
def test_a_worker_holds_no_more_than_it_can_send_within_a_lease(
    timeout_s: float, lease_s: float, concurrency: int, held: int
) -> None:
    hooks = WebhookSettings(timeout_s=timeout_s, lease_s=lease_s, concurrency=concurrency)
    assert capacity(hooks) == held


async def test_send_slots_hold_their_limit_and_forget_keys_no_one_uses() -> None:
    slots = Slots(2)
    inside: dict[str, int] = {"a": 0, "b": 0}
    peak: dict[str, int] = {"a": 0, "b": 0}
    gate = asyncio.Event()

    async def one(key: str) -> None:
        async with slots.hold(key):
            inside[key] += 1
            peak[key] = max(peak[key], inside[key])
            await gate.wait()
            inside[key] -= 1

    tasks = [asyncio.create_task(one(k)) for k in "aaaab"]
    for _ in range(5):
        await asyncio.sleep(0)
    assert inside == {"a": 2, "b": 1}  # two of the four a's wait; b has its own slots
    assert len(slots) == 2
    gate.set()
    await asyncio.gather(*tasks)
    assert peak == {"a": 2, "b": 1}
    assert len(slots) == 0


async def test_a_send_cancelled_while_waiting_for_slots_holds_none() -> None:
    """A wait for the tenant's slot that is cancelled gives back the URL slot it held."""
    limits = Limits(Slots(4), Slots(1), Slots(4))
    assert limits.take("u1", "acme") is None  # all three free: taken at once
    waiting = limits.take("u2", "acme")  # the tenant's one slot is held
    assert waiting is not None
    task = asyncio.ensure_future(waiting)
    await asyncio.sleep(0)
    assert (len(limits.url), len(limits.tenant), len(limits.total)) == (2, 1, 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (len(limits.url), len(limits.tenant), len(limits.total)) == (1, 1, 1)
    limits.give("u1", "acme")
    assert (len(limits.url), len(limits.tenant), len(limits.total)) == (0, 0, 0)


async def test_a_freed_slot_goes_to_the_first_in_line_even_when_it_was_cancelled() -> None:
    slots = Slots(1)
    assert slots.try_take("k")
    first = asyncio.ensure_future(slots.take("k"))
    second = asyncio.ensure_future(slots.take("k"))
    await asyncio.sleep(0)
    slots.give("k")  # handed to the first in line
    first.cancel()  # ...which is cancelled before it runs: the slot passes on to the second
    with pytest.raises(asyncio.CancelledError):
        await first
    await second
    assert not slots.try_take("k")
    slots.give("k")
    assert len(slots) == 0


async def test_a_due_delivery_whose_record_is_gone_is_dropped(redis_url, redis, ledger) -> None:
    settings = hook_settings(redis_url)
    await redis.zadd(keys.WEBHOOKS_DUE, {"wh_gone": 0})
    with running_receiver() as rx:
        jid = await finished_job(ledger, rx.url)
        report = await run(settings, redis, virtual_clock())
    assert (report["claimed"], report["delivered"]) == (1, 1)
    assert len(rx.requests) == 1
    assert (await delivery(redis, jid))["status"] == "delivered"
    assert await redis.zcard(keys.WEBHOOKS_DUE) == 0


def gzip_of_zeros(megabytes: int) -> bytes:
    """A gzip stream that inflates to ``megabytes`` MB of zeros, made without holding them."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip framing
    block = bytes(2**20)
    return b"".join(packer.compress(block) for _ in range(megabytes)) + packer.flush()


async def test_a_compressed_answer_is_never_inflated(redis_url, redis, ledger) -> None:
    """A 64 MB gzip bomb in an error answer costs what its first raw KB cost."""
    settings = hook_settings(redis_url)
    bomb = BodyPlan(gzip_of_zeros(64), 1)
    with running_receiver(lambda n: (500, {"content-encoding": "gzip"}, 0.0), plan=bomb) as rx:
        jid = await finished_job(ledger, rx.url)
        report, peak = await peak_mb(run(settings, redis, virtual_clock()))
    assert report["retry"] == 1
    assert peak < 20
    assert rx.requests[0].headers["accept-encoding"] == "identity"
    assert "larger than 4096 bytes" in (await delivery(redis, jid))["last_error"]


def job_shape(rng: random.Random, n: int) -> tuple[dict[str, bytes], bytes | None]:
    """A terminal job's hash as the ledger may hold it, and its result: one of many shapes (route,
    result, error, cost, usage, tags, client batch line, dedup follower, cancelled, unicode...)."""
    jid = f"job_shape{n:04d}_{rng.randrange(10**6)}"
    state = rng.choice(["succeeded", "failed", "cancelled"])
    created = rng.choice([1_764_523_251_000, 1_764_523_251_007, 946_684_800_000]) + rng.randrange(10**6)
    text = rng.choice(["plain", "ünïcødé ✓ 日本", 'quote " back \\ slash', "ctl \x01\t\n", "/a/b", "\u2028"])
    raw: dict[str, bytes] = {
        "id": jid.encode(),
        "tenant": b"acme",
        "provider": rng.choice([b"openai", b"anthropic"]),
        "endpoint": rng.choice([b"/v1/chat/completions", b"/v1/messages"]),
        "model": rng.choice(["gpt-4o-mini", "claude-3-5-haiku", "modèle-ü"]).encode(),
        "state": state.encode(),
        "route": rng.choice([b"batch", b"flex", b"sync", b""]),
        "deadline_ms": str(created + rng.choice([0, 999, 86_400_000])).encode(),
        "created_ms": str(created).encode(),
        "body": b'{"model":"m"}',
        "size": b"13",
        "callback_url": b"placeholder",
        "tags": orjson.dumps(rng.choice([{}, {"feature": "chat"}, {"k": text, "ü": "✓"}])),
        "feature": rng.choice([b"", b"chat"]),
        "batch_id": rng.choice([b"", b"bat_1"]),
        "prefix": b"",
    }
    raw["lane"] = raw["provider"] + b":" + raw["model"] + b":" + raw["endpoint"]
    if rng.random() < 0.8:
        raw["completed_ms"] = str(created + rng.choice([0, 1, 1000, 123_456])).encode()
    if rng.random() < 0.7:
        raw["attempts"] = str(rng.choice([0, 1, 3])).encode()
    if state == "failed" or rng.random() < 0.2:
        raw["error"] = orjson.dumps(
            {"type": "provider_error", "message": text, "code": rng.choice([None, 500])}
        )
    if rng.random() < 0.6:
        raw["usage"] = orjson.dumps({"input_tokens": rng.randrange(10**5), "output_tokens": 7})
    if rng.random() < 0.6:
        raw["cost"] = orjson.dumps({"usd": rng.choice([0.0, 1e-7, 0.125, 12.5]), "discounted": True})
    if rng.random() < 0.3:
        raw["dedup_of"] = b"job_leader_1"
        raw["dedup_digest"] = b"d" * 16
    if rng.random() < 0.3:
        raw["client_batch"] = b"cbat_1"
        raw["custom_id"] = text.encode()
    if rng.random() < 0.3:
        raw["traceparent"] = b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01"
    result = rng.choice(
        [None, b'{"ok": 1}', orjson.dumps({"content": [{"type": "text", "text": text}], "n": 1.5e-9})]
    )
    return raw, result


def test_the_view_of_claimed_fields_is_the_records_view_for_every_shape() -> None:
    """jobs.view_of_fields (what a delivery decodes) equals JobRecord.view over many job shapes."""
    rng = random.Random(16)
    for n in range(2000):
        raw, result = job_shape(rng, n)
        values = [raw.get(f) for f in VIEW_FIELDS]
        record = JobRecord.from_view_fields(values)
        assert record is not None
        assert orjson.dumps(view_of_fields(values, result)) == orjson.dumps(record.view(result)), raw


async def test_each_body_is_the_job_view_byte_for_byte_for_every_shape(redis_url, redis) -> None:
    """What the receiver gets is ``{"type", "timestamp", "data": JobRecord.view}`` of the stored job,
    the same bytes, and verifies with both of the tenant's secrets, for many job shapes."""
    settings = hook_settings(redis_url)
    rng = random.Random(7)
    with running_receiver(secrets=(SECRET, NEW_SECRET)) as rx:
        shapes = [job_shape(rng, n) for n in range(60)]
        for raw, result in shapes:
            jid = raw["id"].decode()
            raw["callback_url"] = rx.url.encode()
            await redis.hset(keys.job(jid), mapping=raw)  # type: ignore[arg-type]
            if result is not None:
                await redis.set(keys.result(jid), result)
            did = f"wh_{jid}"
            await redis.hset(
                keys.webhook_delivery(did),
                mapping={
                    "id": did,
                    "job_id": jid,
                    "tenant": "acme",
                    "url": rx.url,
                    "event_id": f"msg_{jid}",
                    "type": f"job.{raw['state'].decode()}",
                    "created_ms": 0,
                    "attempts": 0,
                    "status": "pending",
                },
            )
            await redis.zadd(keys.WEBHOOKS_DUE, {did: 0})
        assert (await run(settings, redis, virtual_clock()))["delivered"] == len(shapes)
    by_id = {req.headers["webhook-id"]: req for req in rx.requests}
    assert len(by_id) == len(shapes)
    for raw, _ in shapes:
        jid = raw["id"].decode()
        stored = JobRecord.from_hash(await redis.hgetall(keys.job(jid)))  # type: ignore[misc]
        view = stored.view(await redis.get(keys.result(jid)))
        req = by_id[f"msg_{jid}"]
        expected = {"type": f"job.{stored.state}", "timestamp": view["completed_at"], "data": view}
        assert req.body == orjson.dumps(expected), jid
        assert req.verified
        for secret in (SECRET, NEW_SECRET):
            Webhook(secret).verify(req.body, req.headers)


async def test_a_tenants_changed_secrets_sign_the_next_delivery(redis_url, redis, ledger) -> None:
    """Keys are cached by secret, so a rotation in settings signs with the new secret at once."""
    before = hook_settings(redis_url)
    after = before.model_copy(
        update={"tenants": {"acme": TenantSettings(api_key="acme-key", webhook_secrets=[NEW_SECRET])}}
    )
    with running_receiver() as rx:
        await finished_job(ledger, rx.url)
        assert (await run(before, redis, virtual_clock()))["delivered"] == 1
        await finished_job(ledger, rx.url)
        assert (await run(after, redis, virtual_clock()))["delivered"] == 1
    first, second = rx.requests
    assert len(first.headers["webhook-signature"].split(" ")) == 2
    assert len(second.headers["webhook-signature"].split(" ")) == 1
    Webhook(NEW_SECRET).verify(second.body, second.headers)
    with pytest.raises(Exception, match="(?i)signature"):
        Webhook(SECRET).verify(second.body, second.headers)
