"""Alert delivery to real local receivers: PagerDuty Events v2, Slack, the signed webhook; retries,
leases, and channels that hang or answer too much (capped as a webhook receiver is)."""

from __future__ import annotations

import random
import time
import tracemalloc

import httpx
import orjson
import pytest
from pydantic import ValidationError

from config.settings import AlertSettings, AlertWebhookSettings, PagerDutySettings, SlackSettings
from scheduler.ledger import keys
from scheduler.slo.alerting import Condition, dedup_key, evaluate
from tests.conftest import make_settings
from tests.scheduler.slo_support import lead
from tests.workers.receiver import BodyPlan, running_receiver
from workers.alerts import AlertSender
from workers.errors import ChannelNotConfigured

LANE = "openai:gpt-4o-mini:/v1/chat/completions"
ROUTING_KEY = "R0123456789abcdef0123456789abcdef"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def alert_settings(redis_url, url, **extra):
    alerts = AlertSettings(
        pagerduty=PagerDutySettings(routing_key=ROUTING_KEY, url=f"{url}/pd"),
        slack=SlackSettings(webhook_url=f"{url}/slack"),
        webhook=AlertWebhookSettings(url=f"{url}/hook", secret=SECRET),
        resolve_after_s=0,
        retry_schedule_s=[0.2, 0.2],
        **extra,
    )
    return make_settings(redis_url, alerts=alerts)


def health(active):
    return Condition("health", active, "critical", True, "lane is breaching", {"sync_share": 0.5})


@pytest.fixture
async def client():
    async with httpx.AsyncClient() as c:
        yield c


def by_path(receiver, path):
    return [orjson.loads(r.body) for r in receiver.requests if r.path == path]


async def test_trigger_and_resolve_reach_every_channel(redis, redis_url, client):
    with running_receiver(secrets=(SECRET,)) as receiver:
        base = receiver.url.removesuffix("/hook")
        settings = alert_settings(redis_url, base)
        now = int(time.time() * 1000)
        await evaluate(redis, settings, LANE, [health(True)], now, token=await lead(redis))
        counts = await AlertSender(redis, client, settings.alerts).run()
        assert counts == {"sent": 3, "retry": 0, "dead": 0}
        await evaluate(redis, settings, LANE, [health(False)], now + 1, token=await lead(redis))
        await AlertSender(redis, client, settings.alerts).run()
    pd = by_path(receiver, "/pd")
    assert [e["event_action"] for e in pd] == ["trigger", "resolve"]
    assert {e["dedup_key"] for e in pd} == {dedup_key(LANE, "health")}
    assert {e["routing_key"] for e in pd} == {ROUTING_KEY}
    payload = pd[0]["payload"]
    assert payload["severity"] == "critical"
    assert payload["summary"] == "lane is breaching"
    assert payload["source"]
    assert payload["timestamp"].endswith("Z")
    assert payload["custom_details"] == {"sync_share": 0.5}
    assert "RESOLVED" in by_path(receiver, "/slack")[1]["text"]
    hooks = [r for r in receiver.requests if r.path == "/hook"]
    assert all(r.verified for r in hooks)
    assert [orjson.loads(r.body)["type"] for r in hooks] == ["alert.trigger", "alert.resolve"]
    assert await redis.zcard(keys.ALERTS_DUE) == 0
    assert await redis.keys(keys.alert_notification("*")) == []  # a sent notification's record goes
    metrics = await redis.hgetall(keys.METRICS_GLOBAL)
    counted = {k.decode(): int(v) for k, v in metrics.items() if k.startswith(b"alert:")}
    assert counted == {"alert:critical:trigger": 3, "alert:critical:resolve": 3}


async def test_failures_retry_then_succeed_and_400_is_dead(redis, redis_url, client):
    """A 503 is retried on the schedule; PagerDuty's 400 (bad event) is never retried."""

    def respond(n):
        return (503, {}, 0.0) if n == 0 else (200, {}, 0.0)

    with running_receiver(respond) as receiver:
        settings = alert_settings(redis_url, receiver.url.removesuffix("/hook"))
        settings.alerts.pagerduty = None
        settings.alerts.webhook = None
        now = int(time.time() * 1000)
        await evaluate(redis, settings, LANE, [health(True)], now, token=await lead(redis))
        assert await AlertSender(redis, client, settings.alerts).run(now) == {
            "sent": 0,
            "retry": 1,
            "dead": 0,
        }
        assert await AlertSender(redis, client, settings.alerts).run(now) == {
            "sent": 0,
            "retry": 0,
            "dead": 0,
        }
        assert await AlertSender(redis, client, settings.alerts).run(now + 300) == {
            "sent": 1,
            "retry": 0,
            "dead": 0,
        }
    assert len(receiver.requests) == 2
    await redis.flushdb()

    with running_receiver(lambda n: (400, {}, 0.0)) as receiver:
        settings = alert_settings(redis_url, receiver.url.removesuffix("/hook"))
        settings.alerts.slack = None
        settings.alerts.webhook = None
        now = int(time.time() * 1000)
        await evaluate(redis, settings, LANE, [health(True)], now + 1, token=await lead(redis))
        assert await AlertSender(redis, client, settings.alerts).run(now + 1) == {
            "sent": 0,
            "retry": 0,
            "dead": 1,
        }
    assert await redis.zcard(keys.ALERTS_DEAD) == 1
    dead = (await redis.zrange(keys.ALERTS_DEAD, 0, 0))[0].decode()
    assert (await redis.hget(keys.alert_notification(dead), "last_error")) == b"ProviderInvalidRequest 400"
    assert 0 < await redis.ttl(keys.alert_notification(dead)) <= keys.ALERT_DEAD_TTL_S


async def test_unreachable_channel_retries_then_dies_without_leaking_its_url(redis, redis_url, client):
    settings = alert_settings(redis_url, "http://127.0.0.1:9")
    settings.alerts.pagerduty = None
    settings.alerts.webhook = None
    now = int(time.time() * 1000)
    await evaluate(redis, settings, LANE, [health(True)], now, token=await lead(redis))
    outcomes = [await AlertSender(redis, client, settings.alerts).run(now + i * 1000) for i in range(3)]
    assert [o["retry"] for o in outcomes] == [1, 1, 0]
    assert outcomes[2]["dead"] == 1
    dead = (await redis.zrange(keys.ALERTS_DEAD, 0, 0))[0].decode()
    error = (await redis.hget(keys.alert_notification(dead), "last_error")).decode()
    assert error == "ConnectionFailed"
    assert "127.0.0.1" not in error


def test_channel_error_pickles():
    import pickle

    err = pickle.loads(pickle.dumps(ChannelNotConfigured("slack")))  # noqa: S301 - our own bytes
    assert str(err) == "alert channel 'slack' is not configured"


def slack_only(redis_url, url, **extra):
    settings = alert_settings(redis_url, url, **extra)
    settings.alerts.pagerduty = None
    settings.alerts.webhook = None
    return settings


async def peak_mb(work):
    """``work``'s result and the peak of Python memory it allocated (MB)."""
    tracemalloc.start()
    try:
        result = await work
        return result, tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


HUGE = BodyPlan(b"x" * 65536, 300 * 1024 * 1024 // 65536)  # 300 MB, as fast as the client reads
TRICKLE = BodyPlan(b"x", 100_000, 0.05)  # a byte every 50 ms: each read well inside any read timeout


@pytest.mark.parametrize(
    ("status", "counts", "error"),
    [
        (200, {"sent": 1, "retry": 0, "dead": 0}, None),
        (500, {"sent": 0, "retry": 1, "dead": 0}, b"ServerError 500"),
    ],
)
async def test_a_channel_answering_300_mb_costs_a_few_kilobytes(
    redis, redis_url, client, status, counts, error
):
    """Only ``max_response_bytes`` of an answer are read, as for a completion webhook's receiver."""
    with running_receiver(lambda n: (status, {}, 0.0), plan=HUGE) as receiver:
        settings = slack_only(redis_url, receiver.url.removesuffix("/hook"), timeout_s=30.0)
        now = int(time.time() * 1000)
        await evaluate(redis, settings, LANE, [health(True)], now, token=await lead(redis))
        got, peak = await peak_mb(AlertSender(redis, client, settings.alerts).run(now))
    assert got == counts
    assert peak < 20
    assert receiver.body_bytes_sent < 50 * 2**20  # the client hung up long before the end
    if error is not None:
        [nid] = await redis.zrange(keys.ALERTS_DUE, 0, -1)
        record = await redis.hgetall(keys.alert_notification(nid.decode()))
        assert record[b"last_error"] == error
        assert record[b"last_status"] == str(status).encode()


async def test_a_channel_that_hangs_is_cut_off_at_the_send_deadline(redis, redis_url, client):
    """Every read gets its byte in time; the deadline over the whole send still ends it."""
    with running_receiver(lambda n: (200, {}, 0.0), plan=TRICKLE) as receiver:
        settings = slack_only(redis_url, receiver.url.removesuffix("/hook"), timeout_s=0.5)
        now = int(time.time() * 1000)
        await evaluate(redis, settings, LANE, [health(True)], now, token=await lead(redis))
        counts = await AlertSender(redis, client, settings.alerts).run(now)
    assert counts == {"sent": 0, "retry": 1, "dead": 0}
    assert receiver.body_bytes_sent < TRICKLE.count
    [nid] = await redis.zrange(keys.ALERTS_DUE, 0, -1)
    assert await redis.hget(keys.alert_notification(nid.decode()), "last_error") == b"ResponseTimeout"


async def test_retry_after_is_honoured_up_to_the_longest_step(redis, redis_url, client):
    """A channel's day-long Retry-After cannot park a page past the schedule's longest step."""
    with running_receiver(lambda n: (429, {"retry-after": "86400"}, 0.0)) as receiver:
        settings = slack_only(redis_url, receiver.url.removesuffix("/hook"))
        settings.alerts.retry_schedule_s = [1, 120]
        now = int(time.time() * 1000)
        await evaluate(redis, settings, LANE, [health(True)], now, token=await lead(redis))
        assert (await AlertSender(redis, client, settings.alerts).run(now))["retry"] == 1
    [(nid, score)] = await redis.zrange(keys.ALERTS_DUE, 0, -1, withscores=True)
    assert score == now + 120_000
    assert await redis.hget(keys.alert_notification(nid.decode()), "last_error") == b"RateLimited 429"


async def test_a_worker_whose_clock_runs_ahead_leaves_live_claims_alone(redis, redis_url, client):
    """Another worker holds the notification under a lease on Redis server time: a worker 60 s
    ahead sees it due, yet claims nothing, and its lease-holder's outcome is the one that counts."""
    with running_receiver() as receiver:
        settings = slack_only(redis_url, receiver.url.removesuffix("/hook"))
        now = int(time.time() * 1000)
        await evaluate(redis, settings, LANE, [health(True)], now, token=await lead(redis))
        other = AlertSender(redis, client, settings.alerts)
        claimed, left = await other._claim_and_start(now, 10, in_flight := {})
        assert (claimed, left) == (1, False)
        assert await AlertSender(redis, client, settings.alerts).run(now + 60_000) == {
            "sent": 0,
            "retry": 0,
            "dead": 0,
        }
        [outcome] = [await t for t in in_flight]
    assert len(receiver.requests) == 1
    assert outcome.action == "sent"
    await other._apply([outcome], now, other._new_report())
    assert await redis.zcard(keys.ALERTS_DUE) == 0


async def test_a_due_entry_whose_record_is_gone_is_dropped(redis, redis_url, client):
    settings = slack_only(redis_url, "http://127.0.0.1:9")
    await redis.zadd(keys.ALERTS_DUE, {"alt_gone.slack": 0})
    assert await AlertSender(redis, client, settings.alerts).run() == {"sent": 0, "retry": 0, "dead": 0}
    assert await redis.zcard(keys.ALERTS_DUE) == 0
    assert await redis.keys(keys.alert_notification("*")) == []  # the claim wrote no stub record


def test_a_lease_no_longer_than_the_send_deadline_is_refused():
    with pytest.raises(ValidationError, match="lease_s"):
        AlertSettings(timeout_s=30, lease_s=30)


class HighDraws(random.Random):
    """Always draws the top of the range, so a jittered delay is exact."""

    def uniform(self, a: float, b: float) -> float:
        return b


async def test_a_retry_is_jittered_by_the_random_source_given(redis, redis_url, client):
    """Channels that failed together do not retry together: each step moves by up to ± jitter."""
    settings = alert_settings(redis_url, "http://127.0.0.1:9", jitter=0.5)
    settings.alerts.pagerduty = None
    settings.alerts.webhook = None
    now = int(time.time() * 1000)
    await evaluate(redis, settings, LANE, [health(True)], now, token=await lead(redis))
    sender = AlertSender(redis, client, settings.alerts, rng=HighDraws())
    assert (await sender.run(now))["retry"] == 1
    [(_, due)] = await redis.zrange(keys.ALERTS_DUE, 0, -1, withscores=True)
    assert due == now + int(0.2 * 1.5 * 1000)
