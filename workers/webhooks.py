"""Completion webhooks: Standard Webhooks signing, and the webhook kind of :mod:`workers.outbox`.

A job that turns terminal with a ``callback_url`` gets a delivery record ``wh_<job_id>`` in the same
Lua step (scheduler/ledger/lua/finish.lua, cancel.lua), scored in ``keys.WEBHOOKS_DUE`` by its next attempt
time. :class:`Deliverer` is the outbox for them: it claims due deliveries with a lease, sends them
concurrently on the process's SSRF-guarded client, and settles each: delivered, retried later on
the exponential schedule with jitter (``Retry-After`` honoured), dead-lettered after the last
attempt, or disabled when the receiver answers 410. One arq task drains thousands of deliveries;
there is no task per HTTP call.

Receivers are chosen by tenants, so none may cost a worker more than one send's worth: each send
has one deadline over the whole call and reads at most ``max_response_bytes`` of the answer
(:meth:`workers.webhook_http.WebhookClient.post`); sends are limited per (tenant, URL), per tenant and per
process, and a worker holds at most twice a tenant's limit of its deliveries, so a slow receiver
fills only its own slots.

Every attempt of one event carries the same ``webhook-id`` (``msg_<job_id>``), a fresh
``webhook-timestamp``, and one ``v1,`` signature per active secret of the tenant (rotation).
With tracing on, each attempt is a span in the job's trace and its request carries the
``traceparent`` of that span, so the producer's handler continues the trace.
"""

from __future__ import annotations

import base64
import collections
import functools
import hmac
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import orjson
import structlog
from redis.asyncio import Redis

from config.settings import Settings, WebhookSettings
from config.tracing import OFF, Tracing
from scheduler.compat.batches import ClientBatch
from scheduler.ledger import keys, scripts, tasks
from scheduler.ledger.clock import Clock
from scheduler.ledger.jobs import VIEW_FIELDS, iso, view_of_fields
from scheduler.planning.webhook_dispatch import url_hash
from workers import outbox
from workers.context import WorkerContext, tracing_of
from workers.errors import ResponseTimeout, UnsafeDestination, WorkerError
from workers.http import retry_after
from workers.outbox import Item, Outbox, Report, Terms, Verdict
from workers.summary import summarised
from workers.webhook_http import WebhookClient
from workers.webhook_slots import limits_for

log = structlog.get_logger(__name__)

SECRET_PREFIX = "whsec_"  # noqa: S105 -- the format tag of a secret, not a secret
USER_AGENT = "batchshift-webhooks/1"
# A worker holds at most this many times a tenant's concurrency of its deliveries: enough to keep
# the tenant's slots busy between claims, too few for its backlog to fill the worker.
TENANT_HOLD = 2
# What a delivery's message needs: the delivery's own fields and the fields of the job's view
# (scheduler.jobs.VIEW_FIELDS: never the request body, which can be large). job_id, tenant and url
# come first: scheduler/ledger/lua/webhook_claim.lua reads the job from job_id (a client batch's
# event has none) and the URL's 410 mark from tenant and url.
DELIVERY_FIELDS = ("job_id", "tenant", "url", "type", "event_id", "attempts", "client_batch")
TRACE_FIELDS = ("traceparent", "tracestate")  # read with the job's view only when tracing is on

Delivery = dict[str, Any]
# URLs whose keys.disabled_url hash the claim script is given (it cannot make a SHA-256): the most
# recently seen, per process; a claimed delivery to another URL has its mark read after the claim.
KNOWN_URLS = 16


class KnownUrls:
    """The ``url_hash`` of the (tenant, URL) pairs seen last, at most ``size`` of them."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._hashes: collections.OrderedDict[tuple[str, str], str] = collections.OrderedDict()

    def hash(self, tenant: str, url: str) -> str:
        """``url_hash(tenant, url)``, remembered as the latest seen."""
        key = (tenant, url)
        found = self._hashes.get(key)
        if found is None:
            found = self._hashes[key] = url_hash(tenant, url)
            if len(self._hashes) > self.size:
                self._hashes.popitem(last=False)
        else:
            self._hashes.move_to_end(key)
        return found

    def pairs(self) -> list[str]:
        """``"<tenant>\n<url>", hash`` for each, flat, as webhook_claim.lua takes them."""
        out: list[str] = []
        for (tenant, url), hashed in self._hashes.items():
            out += (f"{tenant}\n{url}", hashed)
        return out


_KNOWN_URLS = KnownUrls(KNOWN_URLS)


@functools.lru_cache(maxsize=256)
def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (unpadded base64 is tolerated, as the spec's library does).

    Cached by secret: a tenant's few secrets sign every one of its deliveries."""
    raw = secret.removeprefix(SECRET_PREFIX)
    return base64.b64decode(raw + "=" * (-len(raw) % 4))


def sign(secrets_: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: ``v1,<base64 HMAC-SHA256 of id.timestamp.body>`` per secret."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.digest(secret_key(s), signed, "sha256")).decode() for s in secrets_
    )


def drops_debug(bound: Any) -> bool:
    """Whether ``bound`` drops a debug event before anything sees it: the configuration's first
    processor is the stdlib level filter and its stdlib logger is above debug (production's
    configuration at INFO, config/logging.py), so not calling it changes nothing."""
    processors = structlog.get_config()["processors"]
    return (
        isinstance(bound, structlog.stdlib.BoundLogger)
        and bool(processors)
        and processors[0] is structlog.stdlib.filter_by_level
        and not bound.isEnabledFor(logging.DEBUG)
    )


def build_client(settings: Settings) -> WebhookClient:
    """The process's webhook client (:class:`workers.webhook_http.WebhookClient`) sized by settings."""
    hooks = settings.webhooks
    return WebhookClient(
        settings.webhook_allowlist,
        timeout_s=hooks.timeout_s,
        max_connections=hooks.concurrency,
        user_agent=USER_AGENT,
    )


def terms(hooks: WebhookSettings) -> Terms:
    """The webhook outbox: its keys, lease, deadline, fairness and schedule."""
    return Terms(
        name="webhook",
        due_key=keys.WEBHOOKS_DUE,
        dead_key=keys.WEBHOOKS_DEAD,
        record_prefix=keys.webhook_delivery(""),
        lease_s=hooks.lease_s,
        timeout_s=hooks.timeout_s,
        claim_batch=hooks.claim_batch,
        concurrency=hooks.concurrency,
        group_hold=hooks.per_tenant_concurrency * TENANT_HOLD,
        retry_schedule_s=hooks.retry_schedule_s,
        jitter=hooks.jitter,
    )


def capacity(hooks: WebhookSettings) -> int:
    """Most deliveries a worker holds at once (:func:`workers.outbox.capacity`)."""
    return outbox.capacity(terms(hooks))


@dataclass(slots=True)
class DeliveryReport(Report):
    """What one run of the loop did (counts per action)."""

    delivered: int = 0
    disabled: int = 0


class Deliverer(Outbox[Delivery, DeliveryReport]):
    """The webhook outbox: signs and sends due deliveries; one per task run, sharing the process's client."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        client: WebhookClient,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        tracing: Tracing = OFF,
    ) -> None:
        super().__init__(redis, terms(settings.webhooks), clock=clock, rng=rng, monotonic=monotonic)
        self.settings = settings
        self.tracing = tracing
        self.hooks = settings.webhooks
        self.client = client
        self.limits = limits_for(client, self.hooks)
        self._claim_load = scripts.load(redis, "webhook_claim")
        # Bound once per run, as the module's lazy logger binds the configuration at each call: a
        # delivered send logs at debug, and that bind was most of what a dropped debug line cost.
        self._log = log.bind()
        self._debug = not drops_debug(self._log)
        # Claims begun in this run, and per URL hash that answered 410 in it the number of the last
        # claim begun by then: a delivery of that claim or an earlier one had its URL's mark read
        # before the 410 was settled (it may be waiting for the URL's slot behind the send that got
        # it), so it is not sent; a later claim reads the mark after the settle (and after a replay).
        self._claims = 0
        self._gone: dict[str, int] = {}

    async def run(self, now_ms: int | None = None, budget_s: float = 60.0) -> DeliveryReport:
        """Deliver everything due, claiming as slots free up, until nothing is due or ``budget_s`` passed.

        What is due, and when a retry is next due, is read from the injected clock at each claim
        and settle (or is ``now_ms`` throughout, when given).
        """
        return await self.drain(
            self.lease_clock.now_ms if now_ms is None else outbox.reading(now_ms), budget_s
        )

    def _new_report(self) -> DeliveryReport:
        return DeliveryReport()

    def _metric(self, item: Item[Delivery], action: str) -> str | None:
        return f"webhook:{action}"

    def _log_fields(self, item: Item[Delivery]) -> dict[str, Any]:
        return {"delivery_id": item.id}

    def _take_slots(self, item: Item[Delivery]) -> Awaitable[None] | None:
        """Per (tenant, URL), per tenant, then overall: a slow receiver fills only its own slots."""
        return self.limits.take(item.data["url_hash"], item.group)

    def _give_slots(self, item: Item[Delivery]) -> None:
        self.limits.give(item.data["url_hash"], item.group)

    async def _claim_items(self, args: list[Any]) -> tuple[list[Item[Delivery]], bool]:
        """Claim due deliveries and read, in the same script call (scheduler/ledger/lua/webhook_claim.lua),
        each one's fields, the job fields its message shows, its result and, for URLs this process
        has seen, the URL's 410 mark; then one pipelined read of the marks of other URLs and of the
        client batches of batch events, when there are any."""
        job_fields = VIEW_FIELDS + TRACE_FIELDS if self.tracing.enabled else VIEW_FIELDS
        known = _KNOWN_URLS.pairs()
        self._claims += 1
        claim = self._claims
        raw_ids, left, rows, jobs, results, marks = await self._claim_load(
            keys=self._keys,
            args=[
                *args,
                len(DELIVERY_FIELDS),
                len(job_fields),
                len(known) // 2,
                *DELIVERY_FIELDS,
                *job_fields,
                *known,
            ],
        )
        deliveries: list[Delivery] = []
        for raw_id, row, job, result, mark in zip(raw_ids, rows, jobs, results, marks, strict=True):
            d = {f: v.decode() for f, v in zip(DELIVERY_FIELDS, row, strict=False) if v is not None}
            d["id"] = raw_id.decode()
            d["job"] = job if job and job[0] else None  # its job_fields' values, while the job is there
            d["result"] = result
            d["url_hash"] = _KNOWN_URLS.hash(d.get("tenant", ""), d.get("url", ""))
            d["disabled"] = None if mark is None else bool(mark)  # None: read below
            d["claim"] = claim
            deliveries.append(d)
        return await self._with_marks(deliveries), bool(left)

    async def _with_marks(self, deliveries: list[Delivery]) -> list[Item[Delivery]]:
        """``deliveries`` as items, with the 410 marks the claim did not read and their client
        batches read (one pipelined round trip, only when there is something to read)."""
        urls = sorted({d["url_hash"] for d in deliveries if d["disabled"] is None})
        batch_events = [d for d in deliveries if d.get("client_batch")]
        if urls or batch_events:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in urls:
                    pipe.exists(keys.disabled_url(key))
                for d in batch_events:  # a batch.* event shows the client batch's record, not a job
                    pipe.hgetall(keys.client_batch(d["client_batch"]))
                replies = await pipe.execute()
            marks, batches = replies[: len(urls)], replies[len(urls) :]
            disabled = {key for key, mark in zip(urls, marks, strict=True) if mark}
            for d in deliveries:
                if d["disabled"] is None:
                    d["disabled"] = d["url_hash"] in disabled
            for d, values in zip(batch_events, batches, strict=True):
                d["job"], d["result"] = None, None
                d["batch"] = ClientBatch.from_hash(d["client_batch"], values) if values else None
        return [Item(d["id"], int(d.get("attempts") or 0), d.get("tenant", ""), d) for d in deliveries]

    async def _send(self, item: Item[Delivery]) -> Verdict:
        delivery = item.data
        did = item.id
        values: list[bytes | None] | None = delivery["job"]
        if delivery["disabled"] or self._gone.get(delivery["url_hash"], 0) >= delivery["claim"]:
            return Verdict("disabled", "dead", False, error="receiver answered 410 before; URL disabled")
        if values is None and delivery.get("batch") is None:
            return Verdict("dead", "dead", False, error="job or client batch no longer exists")
        tenant = self.settings.tenants.get(item.group)
        signing = [s.get_secret_value() for s in tenant.webhook_secrets] if tenant else []
        if not signing:
            return Verdict("dead", "dead", False, error="tenant has no webhook secret to sign with")
        if values is None:
            event = batch_event(delivery)
            return await self._post(
                item, delivery["batch"].id, event, self._headers(delivery, signing, event)
            )
        view = view_of_fields(values, delivery["result"])
        job_id = view["id"]
        # The event's time is the job's end: its view's completed_at, the same iso(completed_ms).
        body = orjson.dumps({"type": delivery.get("type"), "timestamp": view["completed_at"], "data": view})
        headers = self._headers(delivery, signing, body)
        if not self.tracing.enabled:
            return await self._post(item, job_id, body, headers)
        traceparent, tracestate = values[len(VIEW_FIELDS) :]  # read with the view when tracing is on
        with self.tracing.span(
            "webhook.deliver",
            parent=traceparent.decode() if traceparent else None,
            tracestate=tracestate.decode() if tracestate else None,
            kind="client",
            attributes={
                "batchshift.job_id": job_id,
                "batchshift.delivery_id": did,
                "batchshift.attempt": item.attempts + 1,
                "webhook.type": delivery.get("type"),
            },
        ) as span:
            headers |= span.headers()  # the receiver continues the trace from this attempt
            verdict = await self._post(item, job_id, body, headers)
            span.set(**{"http.response.status_code": verdict.status_code})
            if verdict.error:
                span.error(verdict.error)
            return verdict

    @staticmethod
    def _headers(delivery: Delivery, signing: Sequence[str], body: bytes) -> dict[str, str]:
        """One attempt's headers, signed over ``body`` with every active secret."""
        # Wall time, not the injected clock: receivers check this header against their own clocks
        # (replay protection), so it must be the real time even when a test runs a virtual one.
        stamp = int(time.time())
        return {
            "content-type": "application/json",
            # The answer is only read for an error message: never let it arrive compressed.
            "accept-encoding": "identity",
            "webhook-id": delivery["event_id"],
            "webhook-timestamp": str(stamp),
            "webhook-signature": sign(signing, delivery["event_id"], stamp, body),
        }

    async def _post(
        self, item: Item[Delivery], subject: str, body: bytes, headers: dict[str, str]
    ) -> Verdict:
        """Send one signed attempt (of job or client batch ``subject``) and judge the receiver's answer."""
        did, url = item.id, item.data.get("url", "")
        limit = self.hooks.max_response_bytes
        try:
            response = await self.client.post(
                url,
                content=body,
                headers=headers,
                deadline_s=self.hooks.timeout_s,
                max_body=limit,
            )
        except UnsafeDestination as exc:
            self._log.warning("webhook.refused", delivery_id=did, subject=subject, reason=str(exc))
            return Verdict("dead", "dead", True, error=str(exc))
        except ResponseTimeout as exc:
            return Verdict.failed(f"timeout: {exc}")
        except WorkerError as exc:
            return Verdict.failed(f"{type(exc).__name__}: {exc}")
        code = response.status_code
        if response.is_success:
            if self._debug:
                self._log.debug("webhook.delivered", delivery_id=did, subject=subject, status=code)
            return Verdict("delivered", "done", True, status_code=code)
        if code == 410:
            self._log.warning("webhook.disabled", delivery_id=did, subject=subject)
            self._gone[item.data["url_hash"]] = self._claims
            key = keys.disabled_url(item.data["url_hash"])  # url_hash(tenant, url), as claimed
            return Verdict("disabled", "dead", True, code, "410 Gone", set_key=key)
        error = f"HTTP {code}"
        if response.truncated:
            error += f"; answer larger than {limit} bytes, the rest not read"
        return Verdict.failed(error, code, retry_after(response.headers))


def batch_event(delivery: Delivery) -> bytes:
    """A ``batch.completed`` event: the client batch as its own API shows it, at its end."""
    batch: ClientBatch = delivery["batch"]
    ended_ms = batch.ended_ms or batch.expires_ms
    results_url = f"/v1/messages/batches/{batch.id}/results"  # relative: a worker knows no API host
    return orjson.dumps(
        {"type": delivery.get("type"), "timestamp": iso(ended_ms), "data": batch.view(ended_ms, results_url)}
    )


@summarised(tasks.DELIVER_WEBHOOKS)
async def deliver_webhooks(ctx: WorkerContext) -> dict[str, int]:
    """arq task: drain due deliveries for up to half the task timeout, on the process's webhook client."""
    settings = ctx["settings"]
    deliverer = Deliverer(
        settings, ctx["redis"], ctx["webhook_http"], clock=ctx["clock"], tracing=tracing_of(ctx)
    )
    report = await deliverer.run(budget_s=settings.worker.job_timeout_s / 2)
    return asdict(report)
