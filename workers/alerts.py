"""Alert delivery: PagerDuty Events API v2, Slack incoming webhooks and a signed JSON webhook.

The scheduler decides alerts (:mod:`scheduler.slo.alerting`) and queues one notification per event
and channel in ``keys.ALERTS_DUE``; the ``send_alerts`` task delivers them. :class:`AlertSender`
is the alert kind of :mod:`workers.outbox`, the same claim → lease → send → settle loop and the
same Lua steps as completion webhooks: it claims due notifications with a lease (on the injected
clock, the Redis server's in production, so a dead worker's claims come back by themselves and a
worker whose own clock runs ahead does not take notifications another is still sending), sends
them concurrently, and settles
each: sent (deleted), retried on ``settings.alerts.retry_schedule_s`` with ``alerts.jitter`` (a
``Retry-After`` longer than the step is honoured, up to the schedule's longest step), or dead-lettered
(``keys.ALERTS_DEAD``) when refused for good (a 4xx other than 408 and 429) or out of retries.
Each send has one deadline (``timeout_s``) over the whole call and reads at most
``max_response_bytes`` of the answer (:func:`workers.http.post_capped`), so a channel that hangs or
answers megabytes costs a worker no more than a completion webhook's receiver does. Nothing here
runs inside the scheduler's tick, so a slow channel never holds it up. Delivery is at least once;
PagerDuty's ``dedup_key`` folds a repeated trigger into the open alert.

The webhook channel's body is the event as JSON, signed with Standard Webhooks headers by
:func:`workers.webhooks.sign`, exactly like completion webhooks.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import structlog
from redis.asyncio import Redis

from config.settings import AlertSettings
from scheduler.ledger import keys, tasks
from scheduler.ledger.clock import Clock, ServerClock
from workers import webhooks
from workers.context import WorkerContext
from workers.errors import ChannelNotConfigured, WorkerError
from workers.http import CappedResponse, error_for_response, post_capped
from workers.outbox import Item, Outbox, Report, Terms, Verdict, reading
from workers.summary import summarised

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


Notification = dict[str, Any]  # {"channel": str, "event": the alert event as a dict}


def terms(alerts: AlertSettings) -> Terms:
    """The alert outbox: its keys, lease, deadline and schedule; no fairness groups, and a sent
    notification's record goes (a dead one stays ``keys.ALERT_DEAD_TTL_S`` for inspection)."""
    return Terms(
        name="alert",
        due_key=keys.ALERTS_DUE,
        dead_key=keys.ALERTS_DEAD,
        record_prefix=keys.alert_notification(""),
        lease_s=alerts.lease_s,
        timeout_s=alerts.timeout_s,
        claim_batch=alerts.claim_batch,
        concurrency=alerts.claim_batch,
        group_hold=alerts.claim_batch,
        retry_schedule_s=alerts.retry_schedule_s,
        jitter=alerts.jitter,
        delete_done=True,
        dead_ttl_s=keys.ALERT_DEAD_TTL_S,
    )


@dataclass(slots=True)
class AlertReport(Report):
    """What one run did (counts per action)."""

    sent: int = 0


class AlertSender(Outbox[Notification, AlertReport]):
    """The alert outbox: sends due notifications to their channels; one per task run, on the process's client."""

    def __init__(
        self,
        redis: Redis,
        client: httpx.AsyncClient,
        alerts: AlertSettings,
        clock: Clock | None = None,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.clock = clock or ServerClock(redis)  # the worker's ctx["clock"]
        super().__init__(redis, terms(alerts), clock=self.clock, rng=rng)
        self.client = client
        self.alerts = alerts

    async def run(self, now_ms: int | None = None, budget_s: float = 60.0) -> dict[str, int]:
        """Deliver every notification due at ``now_ms`` (default: the clock's now); counts by outcome.

        Due times and retries are stamped from that one reading, as the scheduler stamps a tick.
        """
        now = await self.clock.now_ms() if now_ms is None else now_ms
        report = await self.drain(reading(now), budget_s)
        return {"sent": report.sent, "retry": report.retry, "dead": report.dead}

    def _new_report(self) -> AlertReport:
        return AlertReport()

    def _metric(self, item: Item[Notification], action: str) -> str | None:
        if action != "sent":
            return None
        event = item.data["event"]
        return f"alert:{event['severity']}:{event['action']}"

    def _log_fields(self, item: Item[Notification]) -> dict[str, Any]:
        event = item.data.get("event") or {}
        return {
            "notification": item.id,
            "channel": item.data.get("channel"),
            "lane": event.get("lane"),
            "rule": event.get("rule"),
        }

    async def _load(self, ids: list[str]) -> list[Item[Notification]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for nid in ids:
                pipe.hmget(keys.alert_notification(nid), ["channel", "event", "attempts"])
            records = await pipe.execute()
        items = []
        for nid, (channel, event, attempts) in zip(ids, records, strict=True):
            data = {"channel": channel.decode(), "event": orjson.loads(event)} if channel and event else {}
            items.append(Item(nid, int(attempts or 0), "", data))
        return items

    async def _send(self, item: Item[Notification]) -> Verdict:
        if not item.data:
            return Verdict("dead", "dead", False, error="notification record is gone")
        channel, event = item.data["channel"], item.data["event"]
        try:
            response = await self._post(channel, event)
        except WorkerError as exc:
            # The error's type only: a transport error's text carries the URL, and a Slack
            # webhook URL is a secret.
            if not getattr(exc, "retriable", False):  # e.g. a channel no longer configured
                error = type(exc).__name__
                log.warning("alert.dead", **self._log_fields(item), attempts=item.attempts + 1, error=error)
                return Verdict("dead", "dead", True, error=error)
            return Verdict.failed(type(exc).__name__)
        if response.is_success:
            log.info(
                "alert.sent",
                **self._log_fields(item),
                action=event["action"],
                attempts=item.attempts + 1,
                dedup_key=event["dedup_key"],
            )
            return Verdict("sent", "done", True, response.status_code)
        # The channel's answer typed as a provider's is (429 and 5xx retry, other 4xx are for good).
        answer = error_for_response(response.status_code, response.headers, response.body)
        text = f"{type(answer).__name__} {answer.status}"
        if not answer.retriable:
            log.warning("alert.dead", **self._log_fields(item), attempts=item.attempts + 1, error=text)
            return Verdict("dead", "dead", True, answer.status, text)
        return Verdict.failed(text, answer.status, answer.retry_after)

    async def _post(self, channel: str, event: dict[str, Any]) -> CappedResponse:
        """POST ``event`` to ``channel`` in its format, within the deadline and the answer cap."""
        alerts = self.alerts
        headers = {
            "user-agent": USER_AGENT,
            "content-type": "application/json",
            "accept-encoding": "identity",
        }
        if channel == "pagerduty" and alerts.pagerduty is not None:
            url = alerts.pagerduty.url
            content = orjson.dumps(pagerduty_body(event, alerts.pagerduty.routing_key.get_secret_value()))
        elif channel == "slack" and alerts.slack is not None:
            url = alerts.slack.webhook_url.get_secret_value()
            content = orjson.dumps(slack_body(event))
        elif channel == "webhook" and alerts.webhook is not None:
            url = alerts.webhook.url
            content = webhook_body(event)
            msg_id = f"msg_{event['id']}"
            stamp = int(time.time())  # wall time: receivers check it against their own clocks
            headers |= {"webhook-id": msg_id, "webhook-timestamp": str(stamp)}
            if alerts.webhook.secret is not None:
                headers["webhook-signature"] = webhooks.sign(
                    [alerts.webhook.secret.get_secret_value()], msg_id, stamp, content
                )
        else:
            raise ChannelNotConfigured(channel)
        return await post_capped(
            self.client,
            url,
            content=content,
            headers=headers,
            deadline_s=alerts.timeout_s,
            max_body=alerts.max_response_bytes,
        )


@summarised(tasks.SEND_ALERTS)
async def send_alerts(ctx: WorkerContext) -> dict[str, int]:
    """arq task: deliver the alert notifications due now (enqueued by the scheduler's SLO step)."""
    settings = ctx["settings"]
    sender = AlertSender(ctx["redis"], ctx["http"], settings.alerts, ctx["clock"])
    return await sender.run(budget_s=settings.worker.job_timeout_s / 2)
