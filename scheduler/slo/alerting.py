"""Alert decisions: which incidents a lane opens, re-notifies and resolves, written to an outbox.

The scheduler decides; workers do the I/O. Each tick, every rule of a lane reports a
:class:`Condition` (active or not, with severity and figures). An incident opens with one
``trigger`` when its rule becomes active, re-notifies after ``settings.alerts.renotify_s`` while
it stays active, and resolves once the rule has stayed clear for ``settings.alerts.resolve_after_s``
(a rule that comes back before then is the same incident, so a flapping lane pages once). Each
incident has a stable ``dedup_key`` per lane and rule (:func:`dedup_key`), so PagerDuty folds
repeats into the open alert and a resolve closes it.

Rules: ``health`` (the lane is lagging or breaching; pages), one per burn rule
(``burn_page_3600s`` ...; page rules page, ticket rules notify), ``sync_share`` (the savings are
leaking; notifies). Pages go to PagerDuty, Slack and the webhook; notices to Slack and the
webhook. An escalation of an open incident (lagging to breaching) is a notice, not a second page.

Each event becomes one outbox notification per channel (``keys.ALERTS_DUE``), written in the same
atomic step as the incident's state and only while the caller's leader fencing token is current
(:func:`scheduler.leader.fenced_write`), so a leader deposed mid-tick cannot page a second time;
``workers.alerts`` delivers them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from redis.asyncio import Redis

from config.settings import Settings
from scheduler.ledger import keys
from scheduler.ledger.ids import new_id
from scheduler.ledger.leader import Command, fenced_write

Severity = Literal["critical", "error", "warning", "info"]
Action = Literal["trigger", "resolve", "escalate"]
Channel = Literal["pagerduty", "slack", "webhook"]
SEVERITY_RANK: dict[str, int] = {"info": 0, "warning": 1, "error": 2, "critical": 3}
# PagerDuty caps dedup_key at 255 characters; longer keys keep a readable head plus a hash.
MAX_DEDUP_KEY = 255


def dedup_key(lane: str, rule: str) -> str:
    """The incident's stable key: ``batchshift/<lane>/<rule>``."""
    key = f"batchshift/{lane}/{rule}"
    if len(key) <= MAX_DEDUP_KEY:
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"{key[: MAX_DEDUP_KEY - 17]}~{digest}"


@dataclass(frozen=True, slots=True)
class Condition:
    """One rule's verdict for a lane at one tick."""

    rule: str
    active: bool
    severity: Severity
    page: bool  # pages on-call (PagerDuty) rather than only notifying
    summary: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Incident:
    """An open incident of one rule on one lane."""

    opened_ms: int
    notified_ms: int
    severity: Severity
    clear_since_ms: int | None = None

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "opened_ms": self.opened_ms,
                "notified_ms": self.notified_ms,
                "severity": self.severity,
                "clear_since_ms": self.clear_since_ms,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> Incident:
        doc = orjson.loads(raw)
        return cls(doc["opened_ms"], doc["notified_ms"], doc["severity"], doc.get("clear_since_ms"))


def decide(
    incident: Incident | None, cond: Condition, now_ms: int, settings: Settings
) -> tuple[Incident | None, Action | None]:
    """The incident after this tick and the event to send, if any (a pure function of its inputs)."""
    alerts = settings.alerts
    if cond.active:
        if incident is None:
            return Incident(now_ms, now_ms, cond.severity), "trigger"
        incident.clear_since_ms = None
        if now_ms - incident.notified_ms >= alerts.renotify_s * 1000:
            incident.notified_ms = now_ms
            incident.severity = cond.severity
            return incident, "trigger"
        if SEVERITY_RANK[cond.severity] > SEVERITY_RANK[incident.severity]:
            incident.severity = cond.severity
            return incident, "escalate"
        return incident, None
    if incident is None:
        return None, None
    if incident.clear_since_ms is None:
        incident.clear_since_ms = now_ms
    if now_ms - incident.clear_since_ms >= alerts.resolve_after_s * 1000:
        return None, "resolve"
    return incident, None


def channels_for(settings: Settings, action: Action, page: bool) -> list[Channel]:
    """The configured channels an event goes to: pages and their resolves reach PagerDuty too."""
    out: list[Channel] = []
    if settings.alerts.pagerduty is not None and page and action != "escalate":
        out.append("pagerduty")
    if settings.alerts.slack is not None:
        out.append("slack")
    if settings.alerts.webhook is not None:
        out.append("webhook")
    return out


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """An event decided this tick (also what :func:`evaluate` returns for the tick's report)."""

    id: str
    action: Action
    lane: str
    rule: str
    dedup_key: str
    severity: Severity
    summary: str
    channels: tuple[Channel, ...]

    def payload(self, cond: Condition, now_ms: int) -> bytes:
        return orjson.dumps(
            {
                "id": self.id,
                "action": self.action,
                "lane": self.lane,
                "rule": self.rule,
                "dedup_key": self.dedup_key,
                "severity": self.severity,
                "summary": self.summary,
                "details": cond.details,
                "timestamp_ms": now_ms,
            }
        )


@dataclass(slots=True)
class LaneAlerts:
    """A lane's alert decisions of one tick, not written yet: the events and the writes they take."""

    events: list[AlertEvent]
    writes: list[Command]

    async def write(self, redis: Redis, token: int, also: Sequence[Command] = ()) -> None:
        """Store the incidents, queue the notifications and run ``also`` (the lane's snapshot) in one
        step, only while ``token`` is the leader's current fencing token.

        Raises:
            scheduler.batches.Fenced: another replica leads now; nothing was written or queued.
        """
        await fenced_write(redis, token, [*self.writes, *also])


async def evaluate(
    redis: Redis,
    settings: Settings,
    lane: str,
    conditions: list[Condition],
    now_ms: int,
    *,
    token: int,
    also: Sequence[Command] = (),
) -> list[AlertEvent]:
    """Decide a lane's alerts for this tick and write them (:meth:`LaneAlerts.write`) under ``token``."""
    planned = await plan(redis, settings, lane, conditions, now_ms)
    await planned.write(redis, token, also)
    return planned.events


async def plan(
    redis: Redis, settings: Settings, lane: str, conditions: list[Condition], now_ms: int
) -> LaneAlerts:
    """Read the lane's open incidents and decide this tick's events (nothing is written)."""
    raw: dict[bytes, bytes] = await redis.hgetall(keys.alert_state(lane))  # type: ignore[misc]
    return decide_lane(settings, lane, raw, conditions, now_ms)


def decide_lane(
    settings: Settings, lane: str, raw: dict[bytes, bytes], conditions: list[Condition], now_ms: int
) -> LaneAlerts:
    """This tick's events and writes for a lane whose open incidents are ``raw`` (its
    ``keys.alert_state`` hash as read), without reading or writing anything."""
    state_key = keys.alert_state(lane)
    events: list[AlertEvent] = []
    writes: list[Command] = []
    for cond in conditions:
        stored = raw.get(cond.rule.encode())
        incident = Incident.from_json(stored) if stored else None
        after, action = decide(incident, cond, now_ms, settings)
        if after is None:
            if stored:
                writes.append(("HDEL", state_key, cond.rule))
        else:
            writes.append(("HSET", state_key, cond.rule, after.to_json()))
        if action is None:
            continue
        severity = cond.severity if action != "resolve" else (incident.severity if incident else "info")
        summary = cond.summary if action != "resolve" else f"resolved: {lane} {cond.rule}"
        event = AlertEvent(
            id=new_id("alt", now_ms),
            action=action,
            lane=lane,
            rule=cond.rule,
            dedup_key=dedup_key(lane, cond.rule),
            severity=severity,
            summary=summary[:1024],
            channels=tuple(channels_for(settings, action, cond.page)),
        )
        events.append(event)
        body = event.payload(cond, now_ms)
        for channel in event.channels:
            nid = f"{event.id}.{channel}"
            writes.append(
                (
                    "HSET",
                    keys.alert_notification(nid),
                    "id",
                    nid,
                    "channel",
                    channel,
                    "event",
                    body,
                    "attempts",
                    0,
                    "created_ms",
                    now_ms,
                )  # fmt: skip
            )
            writes.append(("ZADD", keys.ALERTS_DUE, now_ms, nid))
    return LaneAlerts(events, writes)


async def write_lanes(redis: Redis, token: int, lanes: Sequence[Sequence[Command]]) -> None:
    """Every lane's writes (its incidents, notifications and snapshot) in one fenced step
    (:func:`scheduler.leader.fenced_write`): one round trip and one fence check for all lanes, and
    either every lane is written or none.

    Raises:
        scheduler.batches.Fenced: another replica leads now; no lane's writes were made.
    """
    await fenced_write(redis, token, [command for commands in lanes for command in commands])


async def due_count(redis: Redis, now_ms: int) -> tuple[int, int | None]:
    """How many notifications are due now, and the earliest due time (for the send task's id)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcount(keys.ALERTS_DUE, "-inf", now_ms)
        pipe.zrange(keys.ALERTS_DUE, 0, 0, withscores=True)
        count, first = await pipe.execute()
    return int(count), (int(first[0][1]) if first else None)
