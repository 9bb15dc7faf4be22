"""Lanes: a provider + model + endpoint, and the batching settings that actually apply to it.

A lane's effective caps are the smaller of its own setting and the provider's limit, so a lane
override can tighten a cap but never push a batch past what the provider accepts. The lane
registry is Redis (``keys.LANES`` plus each lane's meta hash, written at enqueue), so the
scheduler sees every lane that holds work without a config change.

Lanes exist only for what can run: a job's model must be in its provider's catalogue
(:func:`serves`: the models the pricing file prices for it plus ``providers.models``, unless
``allow_any_model``). The tick walks only ``keys.LANES_ACTIVE`` (:func:`load_lanes`), and
:func:`prune` drops lanes idle past ``scheduler.lane_idle_s`` with nothing queued and no batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
import structlog
from redis.asyncio import Redis

from config.settings import ProviderSettings, Settings
from scheduler.costs import pricing
from scheduler.errors import UnknownProvider
from scheduler.ledger import keys, scripts
from scheduler.ledger.jobs import lane_name

log = structlog.get_logger(__name__)

# Bytes a request takes in the batch input beyond its body: the JSONL wrapper with custom_id,
# method and url (OpenAI) or params (Anthropic). Counted per job so a full batch stays under the
# provider's byte limit; 256 is above either provider's wrapper for a 64-char custom_id.
LINE_OVERHEAD_BYTES = 256


@dataclass(frozen=True, slots=True)
class Lane:
    """One lane and its effective batching settings."""

    name: str
    provider: str  # the configured provider name (settings.providers key)
    model: str
    endpoint: str
    max_batch_requests: int
    max_batch_bytes: int
    max_wait_s: float
    min_batch_requests: int | None
    cron: tuple[str, ...]
    cron_window_s: float
    timezone: str
    default_deadline_s: float
    completion_window_s: float  # the provider's promise; the turnaround prior before any history
    group_prefixes: bool = True  # jobs sharing a prompt prefix share a batch, adjacent (prefixes.py)
    warmup_min_group: int | None = None  # prefix groups this large are warmed by a one-request batch

    def batch_bytes(self, requests: int, body_bytes: int) -> int:
        """Bytes ``requests`` jobs with ``body_bytes`` of bodies take in a batch input."""
        return body_bytes + requests * LINE_OVERHEAD_BYTES


def effective(settings: Settings, provider: str, model: str, endpoint: str) -> Lane:
    """The lane's settings: its overrides on the defaults, caps limited by the provider's."""
    name = lane_name(provider, model, endpoint)
    account = settings.providers.get(provider)
    if account is None:
        raise UnknownProvider(name, provider)
    ls = settings.lane_settings(name)
    requests_cap = account.batch_request_limit()
    bytes_cap = account.batch_byte_limit()
    return Lane(
        name=name,
        provider=provider,
        model=model,
        endpoint=endpoint,
        max_batch_requests=min(ls.max_batch_requests or requests_cap, requests_cap),
        max_batch_bytes=min(ls.max_batch_bytes or bytes_cap, bytes_cap),
        max_wait_s=ls.max_wait if ls.max_wait is not None else 60.0,
        min_batch_requests=ls.min_batch_requests,
        cron=tuple(ls.cron or ()),
        cron_window_s=ls.cron_window_s or 3600.0,
        timezone=ls.timezone or "UTC",
        default_deadline_s=ls.default_deadline or 24 * 3600.0,
        completion_window_s=account.completion_window_s,
        group_prefixes=ls.group_prefixes is not False,
        warmup_min_group=ls.warmup_min_group if ls.group_prefixes is not False else None,
    )


def catalogue(settings: Settings, name: str, provider: ProviderSettings) -> frozenset[str]:
    """The models provider ``name`` serves: priced for it in the pricing file, plus ``models`` and
    ``deployments`` (Azure deployment names)."""
    prices = pricing.shared(settings.pricing_file).provider_prices(name, provider.kind)
    priced = prices.models if prices is not None else {}
    return frozenset(priced) | frozenset(provider.models) | frozenset(provider.deployments)


def serves(settings: Settings, name: str, provider: ProviderSettings, model: str) -> bool:
    """Whether a job for ``model`` may make a lane on provider ``name``.

    A dated snapshot of a catalogued model (``gpt-4o-mini-2024-07-18``) is served, as the pricing
    table prices it as its base name.
    """
    if provider.allow_any_model:
        return True
    served = catalogue(settings, name, provider)
    return model in served or pricing.base_model(model) in served


async def load_lanes(redis: Redis, settings: Settings) -> list[Lane]:
    """Every active lane with its effective settings, by name; unconfigured ones are logged and left.

    Active: a job was enqueued or requeued there within ``scheduler.lane_idle_s``, or a batch of it
    is still planned or in flight (:func:`prune` keeps those), so a tick's work grows with the lanes
    in use, not with every lane that ever existed. Metas come in one pipelined round trip.
    """
    names = sorted(n.decode() for n in await redis.zrange(keys.LANES_ACTIVE, 0, -1))
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hmget(keys.lane_meta(name), ["provider", "model", "endpoint"])
        metas = await pipe.execute()
    lanes = []
    for name, (provider, model, endpoint) in zip(names, metas, strict=True):
        if provider is None or model is None or endpoint is None:
            log.warning("lane.meta_missing", lane=name)
            continue
        try:
            lanes.append(effective(settings, provider.decode(), model.decode(), endpoint.decode()))
        except UnknownProvider as exc:
            log.warning("lane.unconfigured", lane=name, provider=exc.provider)
    return lanes


async def adopt_registry(redis: Redis, now_ms: int) -> int:
    """Mark every lane of the registry active (ZADD NX), for data written before ``LANES_ACTIVE``.

    The scheduler calls it once per term: lanes are then pruned as usual when idle and empty.
    """
    names = list(await redis.smembers(keys.LANES))  # type: ignore[misc]
    if not names:
        return 0
    added: int = await redis.zadd(keys.LANES_ACTIVE, dict.fromkeys(names, now_ms), nx=True)
    return added


# Lanes one prune call considers; the rest wait for the next tick, so one tick's work stays bounded.
PRUNE_BATCH = 200


async def busy_lanes(redis: Redis, candidates: list[str]) -> set[str]:
    """Those of ``candidates`` the SLO tracker still needs: a batch planned or in flight, or a
    state other than healthy (its incident must get the ticks that resolve it)."""
    ids = [*await redis.zrange(keys.BATCHES_PLANNED, 0, -1), *await redis.zrange(keys.BATCHES_LIVE, 0, -1)]
    async with redis.pipeline(transaction=False) as pipe:
        for batch_id in ids:
            pipe.hget(keys.batch(batch_id.decode()), "lane")
        for lane in candidates:
            pipe.get(keys.lane_slo(lane))
        replies = await pipe.execute()
    busy = {lane.decode() for lane in replies[: len(ids)] if lane}
    for lane, raw in zip(candidates, replies[len(ids) :], strict=True):
        if raw and orjson.loads(raw).get("state", "healthy") != "healthy":
            busy.add(lane)
    return busy


async def prune(redis: Redis, settings: Settings, now_ms: int) -> list[str]:
    """Drop lanes idle past ``scheduler.lane_idle_s`` whose queue is empty, that hold no batch and
    whose SLO state is healthy.

    The script removes a lane only if it is still idle and empty when it runs (an enqueue in
    between keeps it); a pruned lane comes back with its next job. Returns the pruned names.
    """
    cutoff = now_ms - int(settings.scheduler.lane_idle_s * 1000)
    idle = await redis.zrangebyscore(keys.LANES_ACTIVE, "-inf", cutoff, start=0, num=PRUNE_BATCH)
    if not idle:
        return []
    names = [n.decode() for n in idle]
    keep = await busy_lanes(redis, names)
    candidates = [name for name in names if name not in keep]
    if not candidates:
        return []
    script = scripts.load(redis, "prune_lanes")
    pruned = await script(keys=[keys.LANES_ACTIVE, keys.LANES], args=[cutoff, *candidates])
    done = [name.decode() for name in pruned]
    if done:
        log.info("lanes.pruned", lanes=len(done))
    return done
