"""Alert delivery: PagerDuty Events API v2, Slack incoming webhooks and a signed JSON webhook.

The scheduler decides alerts (:mod:`scheduler.alerting`) and queues one notification per event
and channel in ``keys.ALERTS_DUE``; the ``send_alerts`` task delivers them. It claims due ones
with a lease (the claim moves the score to now + lease, the same Lua step completion webhooks
use, so a dead worker's claims come back by themselves), sends them concurrently, and settles
each: sent (deleted), retried on ``settings.alerts.retry_schedule_s`` (a ``Retry-After`` longer
than the step is honoured), or dead-lettered (``keys.ALERTS_DEAD``) when refused for good (400)
or out of retries. Nothing here runs inside the scheduler's tick, so a slow channel never holds
it up. Delivery is at least once; PagerDuty's ``dedup_key`` folds a repeated trigger into the
open alert.

Claims and retries are stamped with the Redis server's clock (:mod:`scheduler.clock`), so a worker
whose clock runs ahead does not re-claim notifications another is still sending.

The webhook channel's body is the event as JSON, signed with Standard Webhooks headers by
:func:`workers.webhooks.sign`, exactly like completion webhooks.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import httpx
import orjson
import structlog
from redis.asyncio import Redis

from config.settings import AlertSettings, HttpSettings
from scheduler import keys, scripts
from scheduler.clock import server_ms
from workers import webhooks
from workers.context import WorkerContext
from workers.errors import ChannelNotConfigured, ProviderHTTPError, WorkerError
from workers.http import send

log = structlog.get_logger(__name__)

USER_AGENT = "batchshift-alerts/1"
SOURCE = "batchshift"


def pagerduty_body(event: dict[str, Any], routing_key: str) -> dict[str, Any]:
    """A PagerDuty Events API v2 event: trigger with a payload, or resolve by dedup_key alone."""
    if event["action"] == "resolve":
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": event["dedup_key"]}
    return {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": event["dedup_key"],
        "payload": {
            "summary": event["summary"][:1024],
            "source": f"{SOURCE}/{event['lane']}",
            "severity": event["severity"],
            "timestamp": _iso(event["timestamp_ms"]),
            "component": event["lane"],
            "class": event["rule"],
            "custom_details": event.get("details") or {},
        },
        "client": SOURCE,
    }


def slack_body(event: dict[str, Any]) -> dict[str, Any]:
    """A Slack incoming-webhook message: one line of text (Slack has no dedup, so notices only)."""
    mark = {"trigger": "FIRING", "escalate": "ESCALATED", "resolve": "RESOLVED"}[event["action"]]
    details = event.get("details") or {}
    figures = ", ".join(f"{k}={v}" for k, v in details.items() if not isinstance(v, dict | list))
    text = f"[{mark}] [{event['severity']}] {event['summary']} (lane {event['lane']}, rule {event['rule']})"
    return {"text": f"{text}\n{figures}" if figures else text}


def webhook_body(event: dict[str, Any]) -> bytes:
    """The generic webhook's body: the event, typed ``alert.<action>``."""
    return orjson.dumps({"type": f"alert.{event['action']}", **event})


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


class AlertSender:
    """Claims, sends and settles alert notifications; one per task run, on the process's client."""

    def __init__(self, redis: Redis, client: httpx.AsyncClient, alerts: AlertSettings) -> None:
        self.redis = redis
        self.client = client
        self.alerts = alerts
        self._claim = scripts.load(redis, "webhook_claim", webhooks.LUA_DIR)
        # One attempt per call: retries are the outbox's job, on its own schedule.
        self._http = HttpSettings(
            connect_timeout=alerts.timeout_s,
            read_timeout=alerts.timeout_s,
            write_timeout=alerts.timeout_s,
            pool_timeout=alerts.timeout_s,
            max_retries=0,
        )

    async def run(self, now_ms: int | None = None) -> dict[str, int]:
        """Deliver every notification due now, a slice at a time; returns counts by outcome."""
        counts = {"sent": 0, "retry": 0, "dead": 0}
        while True:
            now = await server_ms(self.redis) if now_ms is None else now_ms
            token = secrets.token_hex(8)
            lease_end = now + int(self.alerts.lease_s * 1000)
            ids = await self._claim(
                keys=[keys.ALERTS_DUE],
                args=[now, lease_end, self.alerts.claim_batch, token, keys.alert_notification("")],
            )
            if not ids:
                return counts
            outcomes = await asyncio.gather(*(self._deliver(i.decode(), now) for i in ids))
            for outcome in outcomes:
                counts[outcome] += 1
            if len(ids) < self.alerts.claim_batch:
                return counts

    async def _deliver(self, nid: str, now_ms: int) -> str:
        raw: dict[bytes, bytes] = await self.redis.hgetall(keys.alert_notification(nid))  # type: ignore[misc]
        if not raw:
            await self.redis.zrem(keys.ALERTS_DUE, nid)
            return "dead"
        channel = raw[b"channel"].decode()
        event = orjson.loads(raw[b"event"])
        attempts = int(raw.get(b"attempts", b"0")) + 1
        bound = log.bind(notification=nid, channel=channel, lane=event["lane"], rule=event["rule"])
        try:
            await self._send(channel, event)
        except (WorkerError, httpx.HTTPError) as exc:
            return await self._failed(nid, exc, attempts, now_ms, bound)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(keys.ALERTS_DUE, nid)
            pipe.delete(keys.alert_notification(nid))
            pipe.hincrby(keys.METRICS_GLOBAL, f"alert:{event['severity']}:{event['action']}", 1)
            await pipe.execute()
        bound.info("alert.sent", action=event["action"], attempts=attempts, dedup_key=event["dedup_key"])
        return "sent"

    async def _send(self, channel: str, event: dict[str, Any]) -> None:
        alerts = self.alerts
        headers = {"user-agent": USER_AGENT}
        if channel == "pagerduty" and alerts.pagerduty is not None:
            body = pagerduty_body(event, alerts.pagerduty.routing_key.get_secret_value())
            await send(self.client, "POST", alerts.pagerduty.url, http=self._http, idempotent=True,
                       json=body, headers=headers, timeout=alerts.timeout_s)  # fmt: skip
        elif channel == "slack" and alerts.slack is not None:
            await send(self.client, "POST", alerts.slack.webhook_url.get_secret_value(), http=self._http,
                       idempotent=True, json=slack_body(event), headers=headers, timeout=alerts.timeout_s)  # fmt: skip
        elif channel == "webhook" and alerts.webhook is not None:
            content = webhook_body(event)
            msg_id = f"msg_{event['id']}"
            stamp = int(time.time())
            headers |= {
                "content-type": "application/json",
                "webhook-id": msg_id,
                "webhook-timestamp": str(stamp),
            }
            if alerts.webhook.secret is not None:
                headers["webhook-signature"] = webhooks.sign(
                    [alerts.webhook.secret.get_secret_value()], msg_id, stamp, content
                )
            await send(self.client, "POST", alerts.webhook.url, http=self._http, idempotent=True,
                       content=content, headers=headers, timeout=alerts.timeout_s)  # fmt: skip
        else:
            raise ChannelNotConfigured(channel)

    async def _failed(
        self, nid: str, exc: Exception, attempts: int, now_ms: int, bound: structlog.BoundLogger
    ) -> str:
        # The error's type and status only: a transport error's text carries the URL, and a
        # Slack webhook URL is a secret.
        status = exc.status if isinstance(exc, ProviderHTTPError) else None
        error = type(exc).__name__ + (f" {status}" if status else "")
        retriable = bool(getattr(exc, "retriable", isinstance(exc, httpx.HTTPError)))
        schedule = self.alerts.retry_schedule_s
        key = keys.alert_notification(nid)
        if not retriable or attempts > len(schedule):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.zrem(keys.ALERTS_DUE, nid)
                pipe.zadd(keys.ALERTS_DEAD, {nid: now_ms})
                pipe.hset(key, mapping={"attempts": attempts, "last_error": error, "status": "dead"})
                pipe.expire(key, keys.ALERT_DEAD_TTL_S)
                await pipe.execute()
            bound.warning("alert.dead", attempts=attempts, error=error)
            return "dead"
        delay = schedule[attempts - 1]
        wait = getattr(exc, "retry_after", None)
        if isinstance(wait, int | float) and wait > delay:
            delay = float(wait)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"attempts": attempts, "last_error": error})
            pipe.zadd(keys.ALERTS_DUE, {nid: now_ms + int(delay * 1000)})
            await pipe.execute()
        bound.info("alert.retry", attempts=attempts, delay=delay, error=error)
        return "retry"


async def send_alerts(ctx: dict[str, Any]) -> dict[str, int]:
    """arq task: deliver the alert notifications due now (enqueued by the scheduler's SLO step)."""
    wctx: WorkerContext = ctx  # type: ignore[assignment]
    sender = AlertSender(wctx["redis"], wctx["http"], wctx["settings"].alerts)
    counts = await sender.run()
    if any(counts.values()):
        log.info("alerts.delivered", **counts)
    return counts
