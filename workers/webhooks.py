"""Completion webhooks: Standard Webhooks signing and the delivery loop.

A job that turns terminal with a ``callback_url`` gets a delivery record ``wh_<job_id>`` in the same
Lua step (scheduler/lua/finish.lua, cancel.lua), scored in ``keys.WEBHOOKS_DUE`` by its next attempt
time. :class:`Deliverer` claims due deliveries with a lease (the claim moves the score to the
lease's end on Redis server time, so a dead worker's claims come back by themselves and a worker
whose clock runs ahead cannot take claims that are still live), sends them concurrently on one
``httpx.AsyncClient``, and settles each: delivered, retried later on the exponential schedule with
jitter (``Retry-After`` honoured), dead-lettered after the last attempt, or disabled when the
receiver answers 410. One arq task drains thousands of deliveries; there is no task per HTTP call.

Receivers are chosen by tenants, so none may cost a worker more than one send's worth: each send
has one deadline over the whole call and reads at most ``max_response_bytes`` of the answer
(:func:`workers.http.post_capped`); sends are limited per (tenant, URL), per tenant and per
process, and a worker holds at most twice a tenant's limit of its deliveries, so a slow receiver
fills only its own slots. A claimed delivery is sent only when its send can end before its lease
does; otherwise it is handed back unsent, so no delivery is ever sent twice at once.

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

from config.settings import Settings, WebhookSettings
from scheduler import keys, scripts
from scheduler.jobs import VIEW_FIELDS, JobRecord, iso
from scheduler.webhook_dispatch import url_hash
from workers.errors import ResponseTimeout, UnsafeDestination, WorkerError
from workers.http import post_capped, retry_after
from workers.ssrf import guarded_transport
from workers.webhook_slots import limits_for

log = structlog.get_logger(__name__)

SECRET_PREFIX = "whsec_"  # noqa: S105 -- the format tag of a secret, not a secret
USER_AGENT = "batchshift-webhooks/1"
# Claim more once fewer than this share of a slice is still in flight, so slow receivers never
# hold the fast ones back.
REFILL_SHARE = 0.5
LUA_DIR = Path(__file__).with_name("lua")
# A worker holds at most this many times a tenant's concurrency of its deliveries: enough to keep
# the tenant's slots busy between claims, too few for its backlog to fill the worker.
TENANT_HOLD = 2
# Due entries one claim looks at, per delivery it may claim (tenants without room are skipped).
SCAN_PER_CLAIM = 4
# Share of the lease kept free after the last send it covers (at most half what the lease has
# beyond one send deadline).
LEASE_MARGIN = 0.05
# What a delivery's message needs: the delivery's own fields and the fields of the job's view
# (scheduler.jobs.VIEW_FIELDS: never the request body, which can be large).
DELIVERY_FIELDS = ("job_id", "tenant", "url", "type", "event_id", "attempts")

Action = Literal["delivered", "retry", "dead", "disabled", "released"]


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
    released: int = 0  # handed back unsent: the send could not have ended within the lease


def lease_slack(hooks: WebhookSettings) -> float:
    """Seconds of a lease left free after the last send it covers (clock rates differ a little)."""
    return min(hooks.lease_s * LEASE_MARGIN, (hooks.lease_s - hooks.timeout_s) / 2)


def capacity(hooks: WebhookSettings) -> int:
    """Most deliveries a worker holds at once: ``claim_batch``, but no more than could all be sent
    within one lease if every receiver took the whole send deadline, so claims outlive their sends."""
    rounds = int((hooks.lease_s - lease_slack(hooks)) // hooks.timeout_s)
    return max(1, min(hooks.claim_batch, hooks.concurrency * rounds))


class Deliverer:
    """Claims, sends and settles due webhook deliveries; one per task run, sharing the process's client."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        client: httpx.AsyncClient,
        *,
        rng: random.Random | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.hooks = settings.webhooks
        self.redis = redis
        self.client = client
        self.rng = rng or random.Random()
        self.monotonic = monotonic
        self.limits = limits_for(client, self.hooks)
        self._claim = scripts.load(redis, "webhook_claim_fair", LUA_DIR)
        self._settle = scripts.load(redis, "webhook_settle", LUA_DIR)
        self._prefix = keys.webhook_delivery("")

    async def run(self, clock: Callable[[], float] = time.time, budget_s: float = 60.0) -> DeliveryReport:
        """Deliver everything due, claiming as slots free up, until nothing is due or ``budget_s`` passed."""
        report = DeliveryReport()
        held_max = capacity(self.hooks)
        started = clock()
        in_flight: dict[asyncio.Task[Outcome], str] = {}  # each send and its tenant
        exhausted = False  # nothing more is due, or the budget is spent
        blocked = False  # what is due belongs to tenants without room: claim after a send ends
        try:
            while True:
                room = held_max - len(in_flight)
                if not exhausted and not blocked and room >= held_max * REFILL_SHARE:
                    if clock() - started < budget_s:
                        claimed, left = await self._claim_and_start(clock, room, in_flight)
                        report.claimed += claimed
                        exhausted = claimed < room and not left
                        blocked = claimed < room and left
                    else:
                        exhausted = True
                if not in_flight:
                    if exhausted or blocked:  # blocked with nothing held: only others' claims are left
                        return report
                    continue
                done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    del in_flight[task]
                blocked = False
                await self._apply([t.result() for t in done], int(clock() * 1000), report)
        finally:
            for task in in_flight:
                task.cancel()

    async def _claim_and_start(
        self, clock: Callable[[], float], room: int, in_flight: dict[asyncio.Task[Outcome], str]
    ) -> tuple[int, bool]:
        """Claim up to ``room`` due deliveries and start their sends; return how many, and whether some were left."""
        hold = self.hooks.per_tenant_concurrency * TENANT_HOLD
        held: dict[str, int] = {}
        for tenant in in_flight.values():
            held[tenant] = held.get(tenant, 0) + 1
        rooms = {tenant: max(0, hold - n) for tenant, n in held.items()}
        token = secrets.token_hex(8)
        # Measured before the claim, so it ends no later than the lease Redis records after it.
        lease_ends = self.monotonic() + self.hooks.lease_s
        raw_ids, left = await self._claim(
            keys=[keys.WEBHOOKS_DUE],
            args=[
                int(clock() * 1000),
                int(self.hooks.lease_s * 1000),
                room,
                token,
                self._prefix,
                hold,
                orjson.dumps(rooms),
                room * SCAN_PER_CLAIM,
            ],
        )
        ids = [i.decode() for i in raw_ids]
        for delivery in await self._load(ids):
            task = asyncio.create_task(self._guarded_send(delivery, token, clock, lease_ends))
            in_flight[task] = delivery.get("tenant", "")
        return len(ids), bool(left)

    async def _load(self, ids: list[str]) -> list[dict[str, Any]]:
        """Each delivery with the job fields its message shows, its result and whether its URL is disabled."""
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for did in ids:
                pipe.hmget(keys.webhook_delivery(did), list(DELIVERY_FIELDS))
            records = await pipe.execute()
        deliveries = [
            {f: v.decode() for f, v in zip(DELIVERY_FIELDS, r, strict=True) if v is not None} | {"id": d}
            for d, r in zip(ids, records, strict=True)
        ]
        async with self.redis.pipeline(transaction=False) as pipe:
            for d in deliveries:
                job_id = d.get("job_id", "")
                pipe.hmget(keys.job(job_id), list(VIEW_FIELDS))
                pipe.get(keys.result(job_id))
                pipe.exists(keys.disabled_url(url_hash(d.get("tenant", ""), d.get("url", ""))))
            replies = await pipe.execute()
        for i, d in enumerate(deliveries):
            values, result, disabled = replies[3 * i : 3 * i + 3]
            job_raw = {f.encode(): v for f, v in zip(VIEW_FIELDS, values, strict=True) if v is not None}
            d["job"] = JobRecord.from_hash(job_raw) if job_raw.get(b"id") else None
            d["result"] = result
            d["disabled"] = bool(disabled)
        return deliveries

    async def _guarded_send(
        self, delivery: dict[str, Any], token: str, clock: Callable[[], float], lease_ends: float
    ) -> Outcome:
        """Send once slots are free (per URL, per tenant, then overall), if the send can end within the lease."""
        tenant = delivery.get("tenant", "")
        url_key = url_hash(tenant, delivery.get("url", ""))
        limits = self.limits
        async with limits.url.hold(url_key), limits.tenant.hold(tenant), limits.total.hold(""):
            latest_start = lease_ends - self.hooks.timeout_s - lease_slack(self.hooks)
            if self.monotonic() > latest_start:
                return Outcome(delivery["id"], token, "released", False)
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
            # The answer is only read for an error message: never let it arrive compressed.
            "accept-encoding": "identity",
            "webhook-id": delivery["event_id"],
            "webhook-timestamp": str(stamp),
            "webhook-signature": sign(signing, delivery["event_id"], stamp, body),
        }
        limit = self.hooks.max_response_bytes
        try:
            response = await post_capped(
                self.client,
                url,
                content=body,
                headers=headers,
                deadline_s=self.hooks.timeout_s,
                max_body=limit,
            )
        except UnsafeDestination as exc:
            log.warning("webhook.refused", delivery_id=did, job_id=job.id, reason=str(exc))
            return Outcome(did, token, "dead", True, error=str(exc))
        except ResponseTimeout as exc:
            return self._failed(delivery, token, clock, None, f"timeout: {exc}", None)
        except WorkerError as exc:
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
        error = f"HTTP {code}"
        if response.truncated:
            error += f"; answer larger than {limit} bytes, the rest not read"
        return self._failed(delivery, token, clock, code, error, wait)

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
