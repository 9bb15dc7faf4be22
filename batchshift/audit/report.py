"""The audit from logs to figures: read every log, weigh and price each feature, simulate its deadlines.

:func:`run` returns an :class:`Audit`; :meth:`Audit.as_json` is the contract::

    {"features": [{"feature", "calls", "input_tokens", "output_tokens", "list_usd", "batch_usd",
                   "flex_usd", "saved_usd", "eligible", "reasons"}],
     "total": {"calls", "list_usd", "batch_usd", "saved_usd", "eligible_share"},
     "detail": {...}}

A feature's ``saved_usd`` is what moving all of it to batch would save (list − batch). The total
moves only the eligible features: its ``batch_usd`` is their batch cost plus everyone else's list
cost, its ``saved_usd`` the difference, and ``eligible_share`` the share of calls in eligible
features. ``detail`` carries what the contract's objects leave out: the inputs read, each feature's
signals, its figures at deadlines of 1, 4 and 24 hours, and its breakdown by model and by caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchshift.audit import costing, deadlines, formats, signals
from batchshift.audit.costing import FeatureCost
from batchshift.audit.deadlines import DeadlineOutcome
from batchshift.audit.rules import Rules
from batchshift.audit.signals import Signals
from batchshift.audit.traffic import FeatureTraffic, gather
from config.settings import Settings
from scheduler.costs.pricing import USD_DIGITS, Pricing

# Features whose deadlines are simulated by default, most expensive first: a simulation takes a
# fraction of a second whatever the feature's volume, so the count of features sets the run time.
DEFAULT_SIMULATE_TOP = 20


@dataclass(slots=True)
class Input:
    """One log read: its name, the format its content showed, and how many calls it held."""

    name: str
    format: formats.Format
    calls: int


@dataclass(slots=True)
class FeatureAudit:
    """One feature: its traffic, what the signals say, what it costs and would save."""

    traffic: FeatureTraffic
    signals: Signals
    cost: FeatureCost
    deadlines: dict[str, DeadlineOutcome] | None
    reasons: list[str]

    @property
    def name(self) -> str:
        return self.traffic.feature

    def as_json(self) -> dict[str, Any]:
        """The contract's feature object: exactly its keys."""
        total = self.cost.total.as_dict()
        return {
            "feature": self.name,
            "calls": total["calls"],
            "input_tokens": total["input_tokens"],
            "output_tokens": total["output_tokens"],
            "list_usd": total["list_usd"],
            "batch_usd": total["batch_usd"],
            "flex_usd": total["flex_usd"],
            "saved_usd": total["saved_usd"],
            "eligible": self.signals.eligible,
            "reasons": self.reasons,
        }

    def detail(self) -> dict[str, Any]:
        return {
            "signals": self.signals.as_dict(),
            "deadlines": None
            if self.deadlines is None
            else {name: outcome.as_dict() for name, outcome in self.deadlines.items()},
            "hourly_calls": [round(x, 3) for x in deadlines.hourly_profile(self.traffic.starts)],
            "by_model": [
                {"provider": provider, "model": model, **cost.as_dict()}
                for (provider, model), cost in sorted(
                    self.cost.by_model.items(), key=lambda kv: -kv[1].list_usd
                )
            ],
            "by_caller": [
                {"caller": caller, **cost.as_dict()}
                for caller, cost in sorted(self.cost.by_caller.items(), key=lambda kv: -kv[1].list_usd)
            ],
        }


@dataclass(slots=True)
class Audit:
    """Every feature, most expensive first, and the inputs they came from."""

    inputs: list[Input]
    features: list[FeatureAudit] = field(default_factory=list)

    def total(self) -> dict[str, Any]:
        """The contract's total: moving the eligible features only."""
        calls = sum(f.cost.total.calls for f in self.features)
        listed = sum((f.cost.total.list_usd for f in self.features), 0.0)
        batch = sum(
            (f.cost.total.batch_usd if f.signals.eligible else f.cost.total.list_usd for f in self.features),
            0.0,
        )
        eligible_calls = sum(f.cost.total.calls for f in self.features if f.signals.eligible)
        return {
            "calls": calls,
            "list_usd": round(listed, 6),
            "batch_usd": round(batch, 6),
            "saved_usd": round(round(listed - batch, USD_DIGITS), 6),
            "eligible_share": round(eligible_calls / calls, 6) if calls else 0.0,
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "features": [f.as_json() for f in self.features],
            "total": self.total(),
            "detail": {
                "inputs": [{"name": i.name, "format": i.format, "calls": i.calls} for i in self.inputs],
                "deadlines_h": list(deadlines.DEADLINES_H),
                "features": {f.name: f.detail() for f in self.features},
            },
        }


def read_logs(paths: Sequence[Path]) -> tuple[list[Input], dict[str, FeatureTraffic]]:
    """Every call of every log, by feature; UnreadableLog names the first log that cannot be read."""
    inputs: list[Input] = []
    features: dict[str, FeatureTraffic] = {}
    for path in paths:
        fmt = formats.detect(path)
        inputs.append(Input(path.name, fmt, gather(formats.read(path, fmt), features)))
    return inputs, features


def audit_feature(traffic: FeatureTraffic, rules: Rules, pricing: Pricing) -> FeatureAudit:
    """One feature weighed and priced (its deadlines are simulated afterwards, by :func:`run`)."""
    read = signals.read(traffic, rules.for_feature(traffic.feature))
    cost = costing.price(traffic, pricing)
    reasons = list(read.reasons)
    for (provider, model), calls in sorted(cost.unpriced.items()):
        counted = f"{calls:,} call{'s' if calls != 1 else ''}"
        reasons.append(
            f"pricing: {counted} of {provider} {model} not in the pricing table, left out of the $"
        )
    return FeatureAudit(traffic, read, cost, None, reasons)


def run(
    paths: Sequence[Path],
    rules: Rules,
    settings: Settings,
    pricing: Pricing,
    *,
    simulate_top: int | None = DEFAULT_SIMULATE_TOP,
) -> Audit:
    """The whole audit of ``paths``; the deadlines of the ``simulate_top`` most expensive features are
    simulated (None: all of them; 0: none), since each simulation costs the same whatever the volume."""
    inputs, features = read_logs(paths)
    audits = [audit_feature(t, rules, pricing) for t in features.values()]
    audits.sort(key=lambda f: (-f.cost.total.list_usd, f.name))
    for rank, feature in enumerate(audits):
        if simulate_top is not None and rank >= simulate_top:
            if simulate_top:
                which = "feature is" if simulate_top == 1 else "features are"
                feature.reasons.append(
                    f"deadlines: not simulated (only the {simulate_top} most expensive {which})"
                )
            continue
        feature.deadlines, why = deadlines.simulate(feature.traffic, feature.cost, settings, pricing)
        if feature.deadlines is None:
            feature.reasons.append(f"deadlines: not simulated ({why})")
    return Audit(inputs, audits)
