"""Alert decisions: one trigger per incident, re-notify, resolve after staying clear; the outbox."""

from __future__ import annotations

import orjson
import pytest

from config.settings import AlertSettings, PagerDutySettings, SlackSettings
from scheduler.errors import Fenced
from scheduler.ledger import keys
from scheduler.slo.alerting import (
    Condition,
    Incident,
    decide,
    dedup_key,
    due_count,
    evaluate,
    plan,
    write_lanes,
)
from tests.conftest import make_settings
from tests.scheduler.slo_support import lead

LANE = "openai:gpt-4o-mini:/v1/chat/completions"
NOW = 1_800_000_000_000


def settings_with(redis_url, **alerts):
    base = {
        "pagerduty": PagerDutySettings(routing_key="R0123456789abcdef0123456789abcdef"),
        "slack": SlackSettings(webhook_url="https://hooks.slack.example/T/B/x"),
        "renotify_s": 100,
        "resolve_after_s": 10,
    }
    return make_settings(redis_url, alerts=AlertSettings(**(base | alerts)))


def cond(active, severity="critical", rule="health", page=True):
    return Condition(rule, active, severity, page, f"lane is {'bad' if active else 'fine'}", {"x": 1})


def test_one_trigger_then_renotify_then_resolve_after_clear(redis_url):
    settings = settings_with(redis_url)
    incident, action = decide(None, cond(True), NOW, settings)
    assert action == "trigger"
    incident, action = decide(incident, cond(True), NOW + 50_000, settings)
    assert action is None
    incident, action = decide(incident, cond(True), NOW + 100_000, settings)
    assert action == "trigger"  # the re-notify interval passed
    incident, action = decide(incident, cond(False), NOW + 101_000, settings)
    assert action is None
    assert incident is not None
    incident, action = decide(incident, cond(True), NOW + 105_000, settings)
    assert action is None  # came back before resolving: the same incident, no new page
    incident, action = decide(incident, cond(False), NOW + 106_000, settings)
    incident, action = decide(incident, cond(False), NOW + 115_000, settings)
    assert action is None
    incident, action = decide(incident, cond(False), NOW + 116_000, settings)
    assert action == "resolve"
    assert incident is None


def test_escalation_is_a_notice(redis_url):
    settings = settings_with(redis_url)
    incident, _ = decide(None, cond(True, "warning"), NOW, settings)
    incident, action = decide(incident, cond(True, "critical"), NOW + 1_000, settings)
    assert action == "escalate"
    _, action = decide(incident, cond(True, "critical"), NOW + 2_000, settings)
    assert action is None


def test_dedup_key_is_stable_per_lane_and_rule_and_bounded():
    assert dedup_key(LANE, "health") == f"batchshift/{LANE}/health"
    assert dedup_key(LANE, "health") != dedup_key(LANE, "sync_share")
    long_lane = "x" * 400
    assert len(dedup_key(long_lane, "health")) == 255
    assert dedup_key(long_lane, "health") != dedup_key(long_lane, "sync_share")


async def test_evaluate_writes_the_outbox_per_channel(redis, redis_url):
    settings = settings_with(redis_url)
    events = await evaluate(
        redis,
        settings,
        LANE,
        [cond(True), cond(True, "warning", "sync_share", False)],
        NOW,
        token=await lead(redis),
    )
    assert [(e.action, e.rule, e.channels) for e in events] == [
        ("trigger", "health", ("pagerduty", "slack")),
        ("trigger", "sync_share", ("slack",)),
    ]
    assert await due_count(redis, NOW) == (3, NOW)
    nid = f"{events[0].id}.pagerduty"
    stored = await redis.hgetall(keys.alert_notification(nid))
    event = orjson.loads(stored[b"event"])
    assert event["dedup_key"] == dedup_key(LANE, "health")
    assert event["details"] == {"x": 1}
    # Still active next tick: nothing new.
    assert (
        await evaluate(
            redis,
            settings,
            LANE,
            [cond(True), cond(True, "warning", "sync_share", False)],
            NOW + 1,
            token=await lead(redis),
        )
        == []
    )
    # Clear long enough: resolves with the same dedup key; the incident is gone.
    await evaluate(redis, settings, LANE, [cond(False)], NOW + 2_000, token=await lead(redis))
    resolved = await evaluate(redis, settings, LANE, [cond(False)], NOW + 12_000, token=await lead(redis))
    assert [(e.action, e.dedup_key) for e in resolved] == [("resolve", dedup_key(LANE, "health"))]
    assert await redis.hget(keys.alert_state(LANE), "health") is None


async def test_no_channels_configured_queues_nothing(redis, redis_url):
    settings = make_settings(redis_url)
    events = await evaluate(redis, settings, LANE, [cond(True)], NOW, token=await lead(redis))
    assert events[0].channels == ()
    assert await due_count(redis, NOW) == (0, None)


async def test_a_deposed_leaders_alert_write_is_refused_and_its_successor_pages_once(redis, redis_url):
    """a read the incidents and decided to page; before it wrote, its lease passed to b, which paged
    too: a's write is refused, so the incident pages once."""
    settings = settings_with(redis_url)
    old = await lead(redis, "a")
    decided = await plan(redis, settings, LANE, [cond(True)], NOW)
    assert [e.action for e in decided.events] == ["trigger"]
    await redis.delete(keys.LEADER_LEASE)  # a's lease ran out while it was paused
    new = await lead(redis, "b")
    events = await evaluate(redis, settings, LANE, [cond(True)], NOW + 1, token=new)
    assert [e.action for e in events] == ["trigger"]
    with pytest.raises(Fenced):
        await decided.write(redis, old, also=[("SET", "x", "1")])
    assert await due_count(redis, NOW + 1) == (2, NOW + 1)  # b's page and slack notice, none of a's
    assert await redis.get("x") is None  # nothing of the fenced step was written
    incident = Incident.from_json(await redis.hget(keys.alert_state(LANE), "health"))
    assert incident.opened_ms == NOW + 1


async def test_every_lanes_writes_in_one_step_and_none_once_deposed(redis, redis_url):
    """The SLO step writes every lane's incidents, outbox and snapshot together: a deposed leader's
    writes are refused for every lane, its successor's all land."""
    settings = settings_with(redis_url)
    other = "anthropic:claude-haiku:/v1/messages"
    old = await lead(redis, "a")
    decided = [await plan(redis, settings, lane, [cond(True)], NOW) for lane in (LANE, other)]
    writes = [[*d.writes, ("SET", f"snapshot:{n}", "a")] for n, d in enumerate(decided)]
    await redis.delete(keys.LEADER_LEASE)  # a's lease ran out while it was paused
    new = await lead(redis, "b")
    with pytest.raises(Fenced):
        await write_lanes(redis, old, writes)
    assert await due_count(redis, NOW) == (0, None)
    assert (
        await redis.exists(keys.alert_state(LANE), keys.alert_state(other), "snapshot:0", "snapshot:1") == 0
    )
    await write_lanes(redis, new, [*writes, []])  # a lane with nothing to write is no call
    assert await due_count(redis, NOW) == (4, NOW)  # each lane's page and slack notice
    assert await redis.mget("snapshot:0", "snapshot:1") == [b"a", b"a"]
    assert await redis.hexists(keys.alert_state(other), "health")
