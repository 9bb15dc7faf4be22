"""Completion webhooks: Standard Webhooks signing and the delivery loop.

A job that turns terminal with a ``callback_url`` gets a delivery record ``wh_<job_id>`` in the same
Lua step (scheduler/lua/finish.lua, cancel.lua), scored in ``keys.WEBHOOKS_DUE`` by its next attempt
time. :class:`Deliverer` claims due deliveries with a lease (the claim moves the score to now +
lease, so a dead worker's claims come back by themselves), sends them concurrently on one
``httpx.AsyncClient`` under a semaphore, and settles each: delivered, retried later on the
exponential schedule with jitter (``Retry-After`` honoured), dead-lettered after the last attempt,
or disabled when the receiver answers 410. One arq task drains thousands of deliveries; there is
no task per HTTP call.

Every attempt of one event carries the same ``webhook-id`` (``msg_<job_id>``), a fresh
``webhook-timestamp``, and one ``v1,`` signature per active secret of the tenant (rotation).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import random
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import orjson
import structlog
from redis.asyncio import Redis

from config.settings import Settings
from scheduler import keys
from scheduler.jobs import JobRecord, iso
from scheduler.webhook_dispatch import url_hash
from workers.http import retry_after
from workers.ssrf import UnsafeDestination, guarded_transport

log = structlog.get_logger(__name__)

SECRET_PREFIX = "whsec_"  # noqa: S105 -- the format tag of a secret, not a secret
USER_AGENT = "batchshift-webhooks/1"
# Claim more once fewer than this share of a slice is still in flight, so slow receivers never
# hold the fast ones back.
REFILL_SHARE = 0.5
LUA_DIR = Path(__file__).with_name("lua")

Action = Literal["delivered", "retry", "dead", "disabled"]


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (unpadded base64 is tolerated, as the spec's library does)."""
    raw = secret.removeprefix(SECRET_PREFIX)
    return base64.b64decode(raw + "=" * (-len(raw) % 4))


def sign(secrets_: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: ``v1,<base64 HMAC-SHA256 of id.timestamp.body>`` per secret."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(secret_key(s), signed, hashlib.sha256).digest()).decode()
        for s in secrets_
    )


def build_client(settings: Settings) -> httpx.AsyncClient:
    """The process's webhook client: SSRF-guarded connections, no redirects, the configured timeout."""
    hooks = settings.webhooks
    return httpx.AsyncClient(
        transport=guarded_transport(settings.webhook_allowlist, max_connections=hooks.concurrency),
        timeout=httpx.Timeout(hooks.timeout_s),
        follow_redirects=False,
        headers={"user-agent": USER_AGENT},
    )


@dataclass(slots=True)
class Outcome:
    """What one claimed delivery came to, as the settle script takes it."""

    id: str
    token: str
    action: Action
    attempted: bool
    next_ms: int | None = None
    status_code: int | None = None
    error: str | None = None
    disable_key: str | None = None


@dataclass(slots=True)
class DeliveryReport:
    """What one run of the loop did (counts per action)."""

    claimed: int = 0
    delivered: int = 0
    retry: int = 0
    dead: int = 0
    disabled: int = 0


class Deliverer:
    """Claims, sends and settles due webhook deliveries; one per process, sharing its HTTP client."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        client: httpx.AsyncClient,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.hooks = settings.webhooks
        self.redis = redis
        self.client = client
        self.rng = rng or random.Random()
        self._claim = redis.register_script((LUA_DIR / "webhook_claim.lua").read_text())
        self._settle = redis.register_script((LUA_DIR / "webhook_settle.lua").read_text())
        self._prefix = keys.webhook_delivery("")

    async def run(self, clock: Callable[[], float] = time.time, budget_s: float = 60.0) -> DeliveryReport:
        """Deliver everything due, claiming as slots free up, until nothing is due or ``budget_s`` passed."""
        report = DeliveryReport()
        started = clock()
        semaphore = asyncio.Semaphore(self.hooks.concurrency)
        in_flight: set[asyncio.Task[Outcome]] = set()
        exhausted = False
        try:
            while True:
                room = self.hooks.claim_batch - len(in_flight)
                if not exhausted and room >= self.hooks.claim_batch * REFILL_SHARE:
                    if clock() - started < budget_s:
                        claimed = await self._claim_and_start(clock, room, semaphore, in_flight)
                        report.claimed += claimed
                        exhausted = claimed < room
                    else:
                        exhausted = True
                if not in_flight:
                    if exhausted:
                        return report
                    continue
                done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                in_flight -= done
                await self._apply([t.result() for t in done], int(clock() * 1000), report)
        finally:
            for task in in_flight:
                task.cancel()

    async def _claim_and_start(
        self,
        clock: Callable[[], float],
        room: int,
        semaphore: asyncio.Semaphore,
        in_flight: set[asyncio.Task[Outcome]],
    ) -> int:
        now_ms = int(clock() * 1000)
        token = secrets.token_hex(8)
        lease_end = now_ms + int(self.hooks.lease_s * 1000)
        raw = await self._claim(keys=[keys.WEBHOOKS_DUE], args=[now_ms, lease_end, room, token, self._prefix])
        ids = [i.decode() for i in raw]
        if not ids:
            return 0
        deliveries = await self._load(ids)
        for delivery in deliveries:
            in_flight.add(asyncio.create_task(self._guarded_send(delivery, token, clock, semaphore)))
        return len(ids)

    async def _load(self, ids: list[str]) -> list[dict[str, Any]]:
        """Each delivery with its job, result and whether its URL is disabled, in two round trips."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for did in ids:
                pipe.hgetall(keys.webhook_delivery(did))
            records = await pipe.execute()
        deliveries = [
            {k.decode(): v.decode() for k, v in r.items()} | {"id": d}
            for d, r in zip(ids, records, strict=True)
        ]
        async with self.redis.pipeline(transaction=False) as pipe:
            for d in deliveries:
                job_id = d.get("job_id", "")
                pipe.hgetall(keys.job(job_id))
                pipe.get(keys.result(job_id))
                pipe.exists(keys.disabled_url(url_hash(d.get("tenant", ""), d.get("url", ""))))
            replies = await pipe.execute()
        for i, d in enumerate(deliveries):
            job_raw, result, disabled = replies[3 * i : 3 * i + 3]
            d["job"] = JobRecord.from_hash(job_raw) if job_raw else None
            d["result"] = result
            d["disabled"] = bool(disabled)
        return deliveries

    async def _guarded_send(
        self,
        delivery: dict[str, Any],
        token: str,
        clock: Callable[[], float],
        semaphore: asyncio.Semaphore,
    ) -> Outcome:
        async with semaphore:
            try:
                return await self._send(delivery, token, clock)
            except Exception as exc:  # one broken delivery must not stop the loop; it is retried
                log.exception("webhook.crashed", delivery_id=delivery["id"])
                return self._failed(delivery, token, clock, None, f"internal error: {exc!r}", None)

    async def _send(self, delivery: dict[str, Any], token: str, clock: Callable[[], float]) -> Outcome:
        did, url = delivery["id"], delivery.get("url", "")
        job: JobRecord | None = delivery["job"]
        if delivery["disabled"]:
            return Outcome(did, token, "disabled", False, error="receiver answered 410 before; URL disabled")
        if job is None:
            return Outcome(did, token, "dead", False, error="job no longer exists")
        tenant = self.settings.tenants.get(delivery.get("tenant", ""))
        signing = [s.get_secret_value() for s in tenant.webhook_secrets] if tenant else []
        if not signing:
            return Outcome(did, token, "dead", False, error="tenant has no webhook secret to sign with")
        body = orjson.dumps(
            {
                "type": delivery.get("type"),
                "timestamp": iso(job.completed_ms),
                "data": job.view(delivery["result"]),
            }
        )
        stamp = int(clock())
        headers = {
            "content-type": "application/json",
            "webhook-id": delivery["event_id"],
            "webhook-timestamp": str(stamp),
            "webhook-signature": sign(signing, delivery["event_id"], stamp, body),
        }
        try:
            response = await self.client.post(url, content=body, headers=headers)
        except UnsafeDestination as exc:
            log.warning("webhook.refused", delivery_id=did, job_id=job.id, reason=str(exc))
            return Outcome(did, token, "dead", True, error=str(exc))
        except httpx.TimeoutException as exc:
            return self._failed(delivery, token, clock, None, f"timeout: {type(exc).__name__}", None)
        except httpx.HTTPError as exc:
            return self._failed(delivery, token, clock, None, f"{type(exc).__name__}: {exc}", None)
        code = response.status_code
        if response.is_success:
            log.debug("webhook.delivered", delivery_id=did, job_id=job.id, status=code)
            return Outcome(did, token, "delivered", True, status_code=code)
        if code == 410:
            log.warning("webhook.disabled", delivery_id=did, job_id=job.id)
            key = keys.disabled_url(url_hash(delivery.get("tenant", ""), url))
            return Outcome(did, token, "disabled", True, status_code=code, error="410 Gone", disable_key=key)
        wait = retry_after(response.headers)
        return self._failed(delivery, token, clock, code, f"HTTP {code}", wait)

    def _failed(
        self,
        delivery: dict[str, Any],
        token: str,
        clock: Callable[[], float],
        code: int | None,
        error: str,
        wait: float | None,
    ) -> Outcome:
        """Retry on the schedule (or after ``Retry-After`` when longer), or dead-letter after the last attempt."""
        attempts = int(delivery.get("attempts") or 0) + 1
        schedule = self.hooks.retry_schedule_s
        if attempts > len(schedule):
            log.warning("webhook.dead", delivery_id=delivery["id"], attempts=attempts, error=error)
            return Outcome(delivery["id"], token, "dead", True, status_code=code, error=error)
        base = schedule[attempts - 1]
        delay = base * (1 + self.rng.uniform(-self.hooks.jitter, self.hooks.jitter))
        if wait is not None:
            delay = max(delay, min(wait, max(schedule)))
        next_ms = int((clock() + delay) * 1000)
        log.info("webhook.retry", delivery_id=delivery["id"], attempts=attempts, delay=delay, error=error)
        return Outcome(delivery["id"], token, "retry", True, next_ms=next_ms, status_code=code, error=error)

    async def _apply(self, outcomes: list[Outcome], now_ms: int, report: DeliveryReport) -> None:
        payload = orjson.dumps([asdict(o) for o in outcomes])
        await self._settle(
            keys=[keys.WEBHOOKS_DUE, keys.WEBHOOKS_DEAD, keys.METRICS_GLOBAL],
            args=[payload, now_ms, self._prefix],
        )
        for o in outcomes:
            setattr(report, o.action, getattr(report, o.action) + 1)


async def deliver_webhooks(ctx: dict[str, Any]) -> dict[str, int]:
    """arq task: drain due deliveries for up to half the task timeout, on the process's webhook client."""
    settings: Settings = ctx["settings"]
    deliverer = Deliverer(settings, ctx["redis"], ctx["webhook_http"])
    report = await deliverer.run(budget_s=settings.worker.job_timeout_s / 2)
    counts = asdict(report)
    if report.claimed:
        log.info("webhooks.delivered", **counts)
    return counts
