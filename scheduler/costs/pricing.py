"""What a job cost: provider usage normalised, priced by route, against its sync counterfactual.

Usage arrives in two shapes. OpenAI's ``prompt_tokens`` (chat, embeddings) or ``input_tokens``
(responses) *include* cached tokens: ``*_tokens_details.cached_tokens`` is a subset. Anthropic's
``input_tokens`` *exclude* ``cache_read_input_tokens`` and ``cache_creation_input_tokens`` (the
total is their sum). :class:`Usage` always holds the OpenAI meaning: ``input_tokens`` is every
prompt token, and the cache counts are subsets of it, so ``uncached_input_tokens`` is what is
billed at the plain input price. Reports then show comparable input token totals for both.

Prices come from ``config/pricing.toml`` (per million tokens, standard sync price). A route's price
is the sync price times the provider's batch or flex factor; cache reads and writes get that factor
too only where the provider says discounts stack. A model missing from the table costs None (one
warning per model), never a crash: the job still finishes and its tokens are still counted.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal, NamedTuple

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from config.settings import SettingsError

log = structlog.get_logger(__name__)

RouteName = Literal["batch", "flex", "sync"]
PER_MILLION = 1_000_000
USD_DIGITS = 9  # nano-dollars: per-job amounts are rounded so aggregates sum the very same numbers

# Dated snapshots map to their base model: gpt-4o-mini-2024-07-18, claude-sonnet-4-5-20250929.
_SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|latest)$")


class Usage(NamedTuple):
    """Token counts of one answer; cache counts are subsets of ``input_tokens`` (see module doc).

    NamedTuples here and in :class:`JobCost`: ingestion prices 50,000 lines a batch, and a frozen
    dataclass's ``__init__`` costs several times a tuple's.
    """

    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int  # written with the default (5-minute) lifetime
    cache_write_1h_tokens: int = 0

    @property
    def uncached_input_tokens(self) -> int:
        """Prompt tokens billed at the plain input price."""
        cached = self.cache_read_tokens + self.cache_write_tokens + self.cache_write_1h_tokens
        return max(0, self.input_tokens - cached)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def normalize_usage(kind: str, usage: dict[str, Any] | None) -> Usage | None:
    """A provider's usage object as :class:`Usage`; None when there is none to read.

    ``kind`` is the provider kind (``openai``, ``anthropic`` or ``gemini``). Unknown or negative
    numbers count as zero rather than failing a result that has already been paid for.
    """
    if not isinstance(usage, dict):
        return None
    if kind == "gemini":
        # usageMetadata: promptTokenCount includes the cached tokens; thinking is billed as output.
        prompted = _int(usage.get("promptTokenCount"))
        return Usage(
            input_tokens=prompted,
            output_tokens=_int(usage.get("candidatesTokenCount")) + _int(usage.get("thoughtsTokenCount")),
            cache_read_tokens=min(_int(usage.get("cachedContentTokenCount")), prompted),
            cache_write_tokens=0,
        )
    if kind == "anthropic":
        read = _int(usage.get("cache_read_input_tokens"))
        created = _int(usage.get("cache_creation_input_tokens"))
        split = usage.get("cache_creation")
        write_1h = _int(split.get("ephemeral_1h_input_tokens")) if isinstance(split, dict) else 0
        write_1h = min(write_1h, created)
        return Usage(
            input_tokens=_int(usage.get("input_tokens")) + read + created,
            output_tokens=_int(usage.get("output_tokens")),
            cache_read_tokens=read,
            cache_write_tokens=created - write_1h,
            cache_write_1h_tokens=write_1h,
        )
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    output = usage.get("completion_tokens", usage.get("output_tokens"))
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    inputs = _int(prompt)
    read = min(_int(details.get("cached_tokens")), inputs) if isinstance(details, dict) else 0
    write = _int(details.get("cache_write_tokens")) if isinstance(details, dict) else 0
    return Usage(
        input_tokens=inputs,
        output_tokens=_int(output),
        cache_read_tokens=read,
        cache_write_tokens=min(write, inputs - read),
    )


class JobCost(NamedTuple):
    """One job's (or one billed attempt's) cost; the amounts are None when the model is unpriced."""

    usage: Usage | None
    actual_usd: float | None
    sync_equivalent_usd: float | None

    @property
    def saved_usd(self) -> float | None:
        """What the route saved against sending the same request synchronously."""
        if self.actual_usd is None or self.sync_equivalent_usd is None:
            return None
        return round(self.sync_equivalent_usd - self.actual_usd, USD_DIGITS)

    def as_dict(self) -> dict[str, float] | None:
        """The job's ``cost`` as the API shows it, or None when unknown."""
        if self.actual_usd is None or self.sync_equivalent_usd is None:
            return None
        return {
            "actual_usd": self.actual_usd,
            "sync_equivalent_usd": self.sync_equivalent_usd,
            "saved_usd": self.saved_usd or 0.0,
        }

    def finish_fields(self) -> dict[str, Any]:
        """Keyword arguments for :class:`scheduler.ledger.Finish` (tokens, amounts, ``cost``)."""
        return {
            "input_tokens": self.usage.input_tokens if self.usage else 0,
            "output_tokens": self.usage.output_tokens if self.usage else 0,
            "cached_tokens": self.usage.cache_read_tokens if self.usage else 0,
            "actual_usd": self.actual_usd or 0.0,
            "sync_usd": self.sync_equivalent_usd or 0.0,
            "cost": self.as_dict(),
        }


class ModelPrice(BaseModel):
    """Standard (sync) prices of one model, USD per million tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_read: float | None = Field(default=None, ge=0)  # None: no discount, the input price
    cache_write: float | None = Field(default=None, ge=0)  # 5-minute write; None: the input price
    cache_write_1h: float | None = Field(default=None, ge=0)  # None: the 5-minute write price
    cache_stacks_with_batch: bool | None = None  # None: the provider's rule

    def sync_usd(self, usage: Usage) -> float:
        """The same usage at the standard sync price."""
        return self.route_usd(usage, 1.0, stacks=True)

    def route_usd(self, usage: Usage, factor: float, *, stacks: bool) -> float:
        """Usage priced with ``factor`` (batch/flex discount); cache lines discounted only if ``stacks``."""
        read = self.input if self.cache_read is None else self.cache_read
        write = self.input if self.cache_write is None else self.cache_write
        write_1h = write if self.cache_write_1h is None else self.cache_write_1h
        plain = usage.uncached_input_tokens * self.input + usage.output_tokens * self.output
        cached = (
            usage.cache_read_tokens * read
            + usage.cache_write_tokens * write
            + usage.cache_write_1h_tokens * write_1h
        )
        total = plain * factor + cached * (factor if stacks else 1.0)
        return round(total / PER_MILLION, USD_DIGITS)


class ProviderPrices(BaseModel):
    """One provider kind's discounts and model prices."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_discount: float = Field(default=0.5, gt=0, le=1)  # batch price = sync price × this
    flex_discount: float | None = Field(default=None, gt=0, le=1)  # None: flex not sold (batch price used)
    cache_stacks_with_batch: bool = True
    models: dict[str, ModelPrice] = {}


class PricingTable(BaseModel):
    """The whole pricing file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    taken: str = ""  # the date the prices were read
    providers: dict[str, ProviderPrices] = {}


@dataclass(slots=True)
class Pricing:
    """Prices jobs. Load once per process from the pricing file; lookups are dict reads."""

    table: PricingTable
    _warned: set[tuple[str, str]] = field(default_factory=set)
    _memo: dict[tuple[str, str, str, str], tuple[ModelPrice, float, bool] | None] = field(
        default_factory=dict
    )

    @classmethod
    def load(cls, path: Path) -> Pricing:
        """Read and validate a pricing TOML file; SettingsError names the file and the bad entry."""
        try:
            raw = tomllib.loads(path.read_text())
            return cls(PricingTable.model_validate(raw))
        except FileNotFoundError as exc:
            raise SettingsError(f"pricing file not found: {path}") from exc
        except (tomllib.TOMLDecodeError, ValidationError) as exc:
            raise SettingsError(f"pricing file {path.name}: {exc}") from exc

    def provider_prices(self, provider: str, kind: str) -> ProviderPrices | None:
        """The table for a configured provider name, else for its kind."""
        return self.table.providers.get(provider) or self.table.providers.get(kind)

    def model_price(self, provider: str, kind: str, model: str) -> ModelPrice | None:
        """A model's prices: exact name, then its base name without a dated snapshot suffix."""
        prices = self.provider_prices(provider, kind)
        found = None
        if prices is not None:
            found = prices.models.get(model) or prices.models.get(_SNAPSHOT.sub("", model))
        if found is None and (provider, model) not in self._warned:
            self._warned.add((provider, model))
            log.warning("pricing.model_unknown", provider=provider, kind=kind, model=model)
        return found

    def discount(self, provider: str, kind: str, route: RouteName) -> float:
        """The factor a route applies to sync prices (1 for sync; flex falls back to batch)."""
        prices = self.provider_prices(provider, kind)
        if route == "sync" or prices is None:
            return 1.0
        if route == "flex" and prices.flex_discount is not None:
            return prices.flex_discount
        return prices.batch_discount

    def job_cost(
        self, provider: str, kind: str, model: str, route: RouteName, usage: dict[str, Any] | None
    ) -> JobCost:
        """Cost of one answer: ``route`` price × normalised usage, and the sync equivalent."""
        return self.usage_cost(provider, kind, model, route, normalize_usage(kind, usage))

    def usage_cost(
        self, provider: str, kind: str, model: str, route: RouteName, normal: Usage | None
    ) -> JobCost:
        """Cost of usage already normalised, e.g. summed over many calls (prices are linear in tokens)."""
        terms = self._terms(provider, kind, model, route)
        if normal is None or terms is None:
            return JobCost(normal, None, None)
        price, factor, stacks = terms
        sync = price.sync_usd(normal)
        actual = sync if route == "sync" else price.route_usd(normal, factor, stacks=stacks)
        return JobCost(normal, actual, sync)

    def _terms(
        self, provider: str, kind: str, model: str, route: RouteName
    ) -> tuple[ModelPrice, float, bool] | None:
        """(model price, route factor, whether cache discounts stack), memoised: ingestion asks
        50,000 times a batch for the same lane."""
        key = (provider, kind, model, route)
        if key in self._memo:
            return self._memo[key]
        price = self.model_price(provider, kind, model)
        prices = self.provider_prices(provider, kind)
        terms = None
        if price is not None and prices is not None:
            stacks = prices.cache_stacks_with_batch
            if price.cache_stacks_with_batch is not None:
                stacks = price.cache_stacks_with_batch
            terms = (price, self.discount(provider, kind, route), stacks)
        self._memo[key] = terms
        return terms


@cache
def shared(path: Path) -> Pricing:
    """The process's Pricing for ``path`` (settings.pricing_file), loaded on first use."""
    return Pricing.load(path)


def base_model(model: str) -> str:
    """A model name without its dated snapshot suffix (the name the pricing table lists)."""
    return _SNAPSHOT.sub("", model)
