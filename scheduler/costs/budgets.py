"""Tenant budgets: a monthly spending envelope, its policy once spent, and a per-job cost ceiling.

Spend per tenant and UTC month lives in ``keys.budget_spend``; ``finish.lua`` adds every billed
amount to it (actual, duplicate and wasted) in the same step that finishes the job, so the figure
is never behind the ledger. The envelope (``TenantSettings.monthly_budget_usd``) resets on the
first day of the next month, UTC. Once it is spent the tenant's ``budget_policy`` applies:

- ``reject``: intake refuses new jobs with 402 ``budget_exceeded``: at once when the billed spend
  has reached the envelope (:func:`check_intake`), and otherwise when billed spend plus the expected
  cost of every admitted job not yet ended (committed, ``keys.budget_committed``) plus this job's
  would pass it. Admission prices the job at the route it will take (:func:`reservation`) and
  ``enqueue.lua`` checks and reserves in one atomic step, so one bulk request cannot queue past
  the envelope; ``finish.lua`` and ``cancel.lua`` release the reservation when the job ends.
- ``batch_only``: jobs are still accepted, but none flips to paid sync; the SLO tracker asks
  :func:`allows_sync` (or :func:`sync_blocked` once per tick) before a flip. Deadlines may be
  missed; they show up as late in the cost report and the on-time metrics.

The per-job ceiling (``max_job_cost_usd``) refuses one job, not the tenant: it is a property of
the request, so it answers 422 ``invalid_request`` naming ``max_tokens`` (the field to change),
while 402 stays reserved for "the account's envelope is spent".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

import orjson
from redis.asyncio import Redis

from config.settings import Settings
from scheduler.costs import pricing, tokens
from scheduler.costs.admission import AdmissionGate
from scheduler.costs.pricing import Pricing, RouteName, Usage
from scheduler.errors import BudgetExceeded, InvalidRequest
from scheduler.ledger import keys
from scheduler.ledger.jobs import NewJob

# Output tokens a reservation assumes for a job without an output cap (its true cost has no bound;
# the reservation settles to the billed amount when the job ends).
UNCAPPED_OUTPUT_TOKENS = 4096


def month_of(now_ms: int) -> str:
    """The UTC month (YYYY-MM) epoch milliseconds fall in."""
    return datetime.fromtimestamp(now_ms / 1000, tz=UTC).strftime("%Y-%m")


def resets_at(month: str) -> datetime:
    """When a month's envelope resets: 00:00 UTC on the first day of the next month."""
    year, number = (int(part) for part in month.split("-"))
    return datetime(year + number // 12, number % 12 + 1, 1, tzinfo=UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class BudgetState:
    """A tenant's envelope this month, as ``GET /v1/budget`` shows it."""

    tenant: str
    month: str
    spent_usd: float
    committed_usd: float  # expected cost of admitted jobs not ended yet (counts under ``reject``)
    budget_usd: float | None  # None: no envelope
    remaining_usd: float | None
    policy: str
    exhausted: bool
    resets_at: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def spent_usd(redis: Redis, tenant: str, month: str) -> float:
    """What the tenant was billed in ``month`` (actual + duplicate + wasted)."""
    raw = await redis.get(keys.budget_spend(tenant, month))
    return float(raw) if raw else 0.0


def _state(settings: Settings, tenant: str, month: str, spent: float, committed: float = 0.0) -> BudgetState:
    config = settings.tenants.get(tenant)
    budget = config.monthly_budget_usd if config else None
    return BudgetState(
        tenant=tenant,
        month=month,
        spent_usd=round(spent, 6),
        committed_usd=round(max(0.0, committed), 6),
        budget_usd=budget,
        remaining_usd=None if budget is None else round(max(0.0, budget - spent), 6),
        policy=config.budget_policy if config else "reject",
        exhausted=budget is not None and spent >= budget,
        resets_at=_iso(resets_at(month)),
    )


async def state(redis: Redis, settings: Settings, tenant: str, now_ms: int) -> BudgetState:
    """The tenant's envelope this month."""
    month = month_of(now_ms)
    spent, committed = await redis.mget(
        [keys.budget_spend(tenant, month), keys.budget_committed(tenant, month)]
    )
    return _state(settings, tenant, month, float(spent or 0), float(committed or 0))


async def check_intake(redis: Redis, settings: Settings, tenant: str, now_ms: int) -> None:
    """Refuse a new job (BudgetExceeded, 402) when the envelope is spent and the policy is ``reject``."""
    config = settings.tenants.get(tenant)
    if config is None or config.monthly_budget_usd is None or config.budget_policy != "reject":
        return
    current = await state(redis, settings, tenant, now_ms)
    if current.exhausted:
        raise BudgetExceeded(
            f"tenant {tenant!r} has spent its monthly budget of ${config.monthly_budget_usd:.2f} "
            f"for {current.month} (${current.spent_usd:.2f} billed); it resets at {current.resets_at}"
        )


async def sync_blocked(redis: Redis, settings: Settings, tenants: Iterable[str], now_ms: int) -> set[str]:
    """Tenants whose jobs may not flip to paid sync now (``batch_only`` with the envelope spent).

    One MGET for all of them, so the SLO tracker can ask once per tick.
    """
    month = month_of(now_ms)
    watched = [
        t
        for t in dict.fromkeys(tenants)
        if (c := settings.tenants.get(t)) is not None
        and c.monthly_budget_usd is not None
        and c.budget_policy == "batch_only"
    ]
    if not watched:
        return set()
    raws = await redis.mget([keys.budget_spend(t, month) for t in watched])
    return {
        t
        for t, raw in zip(watched, raws, strict=True)
        if _state(settings, t, month, float(raw or 0)).exhausted
    }


async def allows_sync(redis: Redis, settings: Settings, tenant: str, now_ms: int) -> bool:
    """Whether a job of ``tenant`` may flip to paid sync now (False: ``batch_only`` and spent)."""
    return tenant not in await sync_blocked(redis, settings, [tenant], now_ms)


@dataclass(frozen=True, slots=True)
class CostTerms:
    """What prices a job before it runs: where it goes, its body and its size in bytes."""

    provider: str
    kind: str
    model: str
    endpoint: str
    route: RouteName
    body: dict[str, Any]
    body_bytes: int

    @property
    def generates(self) -> bool:
        """Whether the endpoint generates text (embeddings do not: their output costs nothing)."""
        return "embeddings" not in self.endpoint


def estimate_usd(pricing: Pricing, terms: CostTerms) -> float | None:
    """The most a job may cost on its route: output cap × output price + body size as input tokens.

    None when the model is not priced, or when the body sets no output cap on an endpoint that
    generates text (its cost is then unbounded).
    """
    price = pricing.model_price(terms.provider, terms.kind, terms.model)
    if price is None:
        return None
    cap = tokens.output_cap(terms.body) if terms.generates else 0
    if cap is None:
        return None
    usage = Usage(
        input_tokens=tokens.input_tokens(terms.body_bytes),
        output_tokens=cap,
        cache_read_tokens=0,
        cache_write_tokens=0,
    )
    return price.route_usd(usage, pricing.discount(terms.provider, terms.kind, terms.route), stacks=True)


def check_job_ceiling(settings: Settings, pricing: Pricing, tenant: str, terms: CostTerms) -> None:
    """Refuse (InvalidRequest, 422, field ``max_tokens``) a job that could cost more than the tenant's ceiling.

    A job without an output cap is refused too when a ceiling is set, since its cost has no bound.
    A model missing from the pricing table is let through (its cost is unknown, and logged).
    """
    config = settings.tenants.get(tenant)
    ceiling = config.max_job_cost_usd if config else None
    if ceiling is None:
        return
    if terms.generates and tokens.output_cap(terms.body) is None:
        raise InvalidRequest(
            f"tenant {tenant!r} has a per-job cost ceiling of ${ceiling:.4f}: "
            "set max_tokens (or max_completion_tokens / max_output_tokens) so the job's cost is bounded",
            "max_tokens",
        )
    estimate = estimate_usd(pricing, terms)
    if estimate is not None and estimate > ceiling:
        raise InvalidRequest(
            f"this job could cost up to ${estimate:.4f} at the {terms.route} price, over tenant {tenant!r}'s "
            f"per-job ceiling of ${ceiling:.4f}; lower max_tokens or shorten the request",
            "max_tokens",
        )


def reservation(pricing: Pricing, terms: CostTerms) -> float:
    """What a job is expected to cost on its route, for the envelope's committed spend.

    As :func:`estimate_usd`, with ``UNCAPPED_OUTPUT_TOKENS`` for a body without an output cap;
    0 for a model the pricing table does not know (its cost is unknown, and logged).
    """
    if terms.generates and tokens.output_cap(terms.body) is None:
        terms = replace(terms, body={**terms.body, "max_tokens": UNCAPPED_OUTPUT_TOKENS})
    return estimate_usd(pricing, terms) or 0.0


async def admission(job: NewJob, gate: AdmissionGate) -> None:
    """Intake's budget check, at the route the job will take (routing runs first): the per-job
    ceiling (422), then the monthly envelope (402 under ``reject``) and the job's reservation.

    Costs one Redis read per job, and only for tenants with a ``reject`` envelope; the envelope is
    checked again, with committed spend, atomically at enqueue (``NewJob.envelope_usd``).
    """
    settings = gate.settings
    config = settings.tenants.get(job.tenant)
    if config is None:
        return
    provider = settings.providers.get(job.provider)
    envelope = config.monthly_budget_usd if config.budget_policy == "reject" else None
    route: RouteName = "sync" if job.state == "sync" else "batch"
    if provider is not None and (config.max_job_cost_usd is not None or envelope is not None):
        decoded = orjson.loads(job.body)
        body = decoded if isinstance(decoded, dict) else {}
        table = pricing.shared(settings.pricing_file)
        model = provider.priced_model(job.model)  # an Azure deployment's model
        terms = CostTerms(job.provider, provider.kind, model, job.endpoint, route, body, len(job.body))
        if config.max_job_cost_usd is not None:
            check_job_ceiling(settings, table, job.tenant, terms)
        if envelope is not None:
            job.envelope_usd = envelope
            job.reserve_usd = reservation(table, terms)
    await check_intake(gate.redis, settings, job.tenant, job.created_ms)
