"""Prices each feature's traffic with config/pricing.toml: at list (sync) price, by batch, by flex.

Every amount comes from :meth:`scheduler.costs.pricing.Pricing.usage_cost` on usage summed per
(caller, provider, model), the very prices the scheduler bills jobs with. A model the table does not
list is left out of the dollar figures (its calls and tokens still count) and reported. Flex is
priced where the provider sells it (the table's ``flex_discount``); traffic whose provider does not
would go by batch, so it counts at the batch price in the flex figure, which is None when no
provider of the traffic sells flex at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from batchshift.audit.traffic import FeatureTraffic
from scheduler.costs.pricing import USD_DIGITS, Pricing, RouteName, Usage

ROUTES: tuple[RouteName, ...] = ("sync", "batch", "flex")


@dataclass(slots=True)
class Cost:
    """Calls, tokens and dollars of some traffic (a feature, or one of its models or callers)."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    list_usd: float = 0.0
    batch_usd: float = 0.0
    flex_or_batch_usd: float = 0.0
    flex_sold: bool = False
    unpriced_calls: int = 0

    @property
    def flex_usd(self) -> float | None:
        """The cost by flex (batch where flex is not sold); None when no provider of it sells flex."""
        return self.flex_or_batch_usd if self.flex_sold else None

    @property
    def saved_usd(self) -> float:
        """What moving this traffic from sync to batch saves."""
        return round(self.list_usd - self.batch_usd, USD_DIGITS)

    def add(self, calls: int, usage: Usage, amounts: dict[RouteName, float | None], flex_sold: bool) -> None:
        self.calls += calls
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        sync, batch, flex = amounts["sync"], amounts["batch"], amounts["flex"]
        if sync is None or batch is None or flex is None:
            self.unpriced_calls += calls
            return
        self.list_usd = round(self.list_usd + sync, USD_DIGITS)
        self.batch_usd = round(self.batch_usd + batch, USD_DIGITS)
        self.flex_or_batch_usd = round(self.flex_or_batch_usd + (flex if flex_sold else batch), USD_DIGITS)
        self.flex_sold = self.flex_sold or flex_sold

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "list_usd": round(self.list_usd, 6),
            "batch_usd": round(self.batch_usd, 6),
            "flex_usd": None if self.flex_usd is None else round(self.flex_usd, 6),
            "saved_usd": round(self.saved_usd, 6),
        }


@dataclass(slots=True)
class FeatureCost:
    """A feature's cost, with its breakdown by model and by caller."""

    total: Cost = field(default_factory=Cost)
    by_model: dict[tuple[str, str], Cost] = field(default_factory=dict)  # (provider, model)
    by_caller: dict[str, Cost] = field(default_factory=dict)
    unpriced: dict[tuple[str, str], int] = field(default_factory=dict)  # (provider, model): calls

    def dominant_model(self) -> tuple[str, str] | None:
        """The (provider, model) with the largest list cost: the one the deadline simulation runs."""
        priced = [(cost.list_usd, key) for key, cost in self.by_model.items() if cost.list_usd > 0]
        return max(priced)[1] if priced else None


def price(traffic: FeatureTraffic, pricing: Pricing) -> FeatureCost:
    """One feature's cost by route, in total and by model and caller."""
    out = FeatureCost()
    for (caller, provider, model), usage, calls in traffic.groups():
        amounts: dict[RouteName, float | None] = {
            route: pricing.usage_cost(provider, provider, model, route, usage).actual_usd for route in ROUTES
        }
        prices = pricing.provider_prices(provider, provider)
        flex_sold = prices is not None and prices.flex_discount is not None
        if amounts["sync"] is None:
            out.unpriced[(provider, model)] = out.unpriced.get((provider, model), 0) + calls
        for cost in (
            out.total,
            out.by_model.setdefault((provider, model), Cost()),
            out.by_caller.setdefault(caller, Cost()),
        ):
            cost.add(calls, usage, amounts, flex_sold)
    return out
