"""Provider webhooks: ``POST /v1/provider-webhooks/{provider}``, where a provider says a batch ended.

OpenAI signs its events per Standard Webhooks: ``webhook-id``, ``webhook-timestamp`` (Unix
seconds) and ``webhook-signature`` (space-separated ``v1,<base64>``), the signature an
HMAC-SHA256 over ``id.timestamp.body`` keyed by the base64 after ``whsec_`` in the provider's
``webhook_secret``. A missing header, a timestamp more than ``TOLERANCE_S`` away from now or a
signature that matches none gets a 400 (``invalid_signature``); a provider with no secret set is
a 404, as if the route did not exist. A verified event is taken once per ``webhook-id`` (``SET
NX``), and :func:`scheduler.provider_events.take_event` makes the guarded change; when it marks the
batch ended, this request enqueues its ingestion itself, so results flow without waiting for a
poll. The answer is 200 with what was done, for every verified event, even one about a batch we do
not know: a provider retries anything else. The secret is never logged nor returned.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

import orjson
import structlog
from arq.connections import ArqRedis
from fastapi import APIRouter, Request
from redis.asyncio import Redis

from api.errors import error_body
from api.responses import JsonResponse
from config.settings import ProviderSettings, Settings
from scheduler import provider_events
from scheduler.errors import PayloadTooLarge, SignatureRefused
from scheduler.ledger import keys, tasks
from scheduler.ledger.clock import ServerClock

log = structlog.get_logger(__name__)

router = APIRouter(tags=["provider webhooks"])

# Standard Webhooks' recommended tolerance: an event signed longer ago (or ahead) is a replay.
TOLERANCE_S = 300
BODY_LIMIT = 64 * 1024  # an OpenAI batch event is a few hundred bytes
SECRET_PREFIX = "whsec_"  # noqa: S105 -- the format tag of a secret, not a secret


def verify(secret: str, headers: dict[str, str], body: bytes, now_s: float) -> str:
    """The event's ``webhook-id`` once its signature and timestamp verify.

    Raises:
        SignatureRefused: a header is missing, the timestamp is stale, or no signature matches.
    """
    msg_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not msg_id or not stamp or not signatures:
        raise SignatureRefused("webhook-id, webhook-timestamp and webhook-signature are required")
    if not stamp.isdigit():
        raise SignatureRefused("webhook-timestamp is not Unix seconds")
    if abs(now_s - int(stamp)) > TOLERANCE_S:
        raise SignatureRefused("webhook-timestamp is too far from now")
    raw = secret.removeprefix(SECRET_PREFIX)
    key = base64.b64decode(raw + "=" * (-len(raw) % 4))
    expected = base64.b64encode(
        hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    ).decode()
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return msg_id
    raise SignatureRefused("no signature matches")


def _provider(settings: Settings, name: str) -> ProviderSettings | None:
    provider = settings.providers.get(name)
    return provider if provider_events.webhooks_configured(provider) else None


async def _body(request: Request) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > BODY_LIMIT:
            raise PayloadTooLarge(f"request body is over the limit of {BODY_LIMIT} bytes", "body")
        chunks.append(chunk)
    return b"".join(chunks)


def _arq(request: Request) -> ArqRedis:
    """An arq pool on the API's own connections (msgpack, like every pool that enqueues)."""
    pool: ArqRedis | None = getattr(request.app.state, "provider_events_arq", None)
    if pool is None:
        redis: Redis = request.app.state.redis
        pool = ArqRedis(
            connection_pool=redis.connection_pool,
            job_serializer=tasks.serialize,
            job_deserializer=tasks.deserialize,
        )
        request.app.state.provider_events_arq = pool
    return pool


@router.post("/v1/provider-webhooks/{provider}")
async def provider_webhook(provider: str, request: Request) -> JsonResponse:
    """Take a provider's signed batch event: a batch's end hands it to ingestion at once."""
    settings: Settings = request.app.state.settings
    configured = _provider(settings, provider)
    if configured is None or configured.webhook_secret is None:
        return JsonResponse(error_body("not_found", "no provider webhooks configured here"), 404)
    body = await _body(request)
    try:
        event_id = verify(
            configured.webhook_secret.get_secret_value(), dict(request.headers), body, time.time()
        )
    except SignatureRefused as exc:
        log.warning("provider_webhook.refused", provider=provider, reason=exc.message)
        return JsonResponse(error_body(exc.error_type, exc.message), exc.status_code)
    try:
        event: Any = orjson.loads(body)
        event_type = event["type"]
        provider_batch_id = event["data"]["id"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return JsonResponse(error_body("invalid_request", "not an event: type and data.id are required"), 400)
    status = provider_events.EVENT_STATUS.get(event_type)
    if status is None or not isinstance(provider_batch_id, str):
        return JsonResponse({"status": "ignored"})
    redis: Redis = request.app.state.redis
    key = keys.provider_event(provider, event_id)
    if not await redis.set(key, event_type, nx=True, ex=keys.PROVIDER_EVENT_TTL_S):
        return JsonResponse({"status": "duplicate"})
    try:
        taken = await _take(request, settings, provider, provider_batch_id, status)
    except BaseException:
        await redis.delete(key)  # not taken: the provider's retry must not be refused as a repeat
        raise
    log.info(
        "provider_webhook.taken",
        provider=provider,
        provider_batch_id=provider_batch_id,
        batch_id=taken.batch_id,
        event_type=event_type,
        outcome=taken.taken,
    )
    return JsonResponse({"status": taken.taken, "batch_id": taken.batch_id})


async def _take(
    request: Request, settings: Settings, provider: str, provider_batch_id: str, status: str
) -> provider_events.EventOutcome:
    """The guarded change, then the task it calls for: ingestion of an ended batch, or a poll now."""
    redis: Redis = request.app.state.redis
    now_ms = await ServerClock(redis).now_ms()
    taken = await provider_events.take_event(redis, settings, provider, provider_batch_id, status, now_ms)
    if taken.batch_id is None:
        return taken
    pool = _arq(request)
    if taken.taken == "ended":
        await tasks.enqueue(
            pool, tasks.INGEST_BATCH, taken.batch_id, job_id=tasks.ingest_job_id(taken.batch_id)
        )
        await provider_events.handed_over(redis, taken.batch_id, now_ms)
    elif taken.taken == "poll":
        job_id = tasks.poll_job_id(taken.batch_id, taken.poll_due_ms)
        await tasks.enqueue(pool, tasks.POLL_BATCH, taken.batch_id, job_id=job_id)
    return taken
