"""Alert delivery to real local receivers: PagerDuty Events v2, Slack, the signed webhook; retries."""

from __future__ import annotations

import random
import time

import httpx
import orjson
import pytest

from config.settings import AlertSettings, AlertWebhookSettings, PagerDutySettings, SlackSettings
from scheduler import keys
from scheduler.alerting import Condition, dedup_key, evaluate
from tests.conftest import make_settings
from tests.scheduler.slo_support import lead
from tests.workers.receiver import running_receiver
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
