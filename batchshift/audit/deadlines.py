"""What a feature would save at a given deadline, from the policy lab's simulator run on its traffic.

Each feature becomes a one-lane scenario of the lab (:mod:`batchshift.simulation`): its hour-of-day
arrival profile (calls in each UTC hour over the days the log spans) as the lane's ``pattern``, its
mean tokens a call and cache share on its largest model, every job given the deadline, on a provider
behaving as the lab's healthy preset (batches take 7 minutes at the median, an hour at p90). The lab
runs the production flip policy (``batchshift``); the on-time ratio and the share saved against
all-sync come back, and the share saved is applied to the feature's list cost.

Kept fast on purpose: a feature's day is sampled down to :data:`SAMPLE_JOBS_PER_DAY` jobs (the
ratios do not depend on volume), and the virtual clock ticks every :data:`TICK_S` seconds (coarser
than production's tick, which only makes flips a little earlier, so the figures err on the safe
side). The lab simulates OpenAI and Anthropic lanes; other providers get no deadline figures.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any, Literal

from batchshift.audit.costing import FeatureCost
from batchshift.audit.traffic import FeatureTraffic
from batchshift.simulation import engine
from batchshift.simulation.scenario import LaneScenario, LogNormalTurnaround, Scenario
from config.settings import Settings
from scheduler.costs.pricing import Pricing

DEADLINES_H = (1, 4, 24)
SAMPLE_JOBS_PER_DAY = 5000
TICK_S = 300.0
TURNAROUND = LogNormalTurnaround(dist="lognormal", median_min=7, p90_min=60)  # the lab's healthy preset
# Provider kinds of the pricing table the lab can simulate, as the lab's lane provider.
SIMULATED: dict[str, Literal["openai", "anthropic"]] = {
    "openai": "openai",
    "azure_openai": "openai",  # Azure's Global Batch is OpenAI's Batch API at OpenAI's prices
    "anthropic": "anthropic",
}


@dataclass(slots=True)
class DeadlineOutcome:
    """One feature at one deadline: share of jobs on time, share and dollars saved against all-sync."""

    deadline_h: int
    on_time_ratio: float
    saved_ratio: float
    saved_usd: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "on_time_ratio": round(self.on_time_ratio, 6),
            "saved_ratio": round(self.saved_ratio, 6),
            "saved_usd": round(self.saved_usd, 6),
        }


def hourly_profile(starts: list[float]) -> list[float]:
    """Calls in each UTC hour of the day, averaged over the days the log spans."""
    hours = [0.0] * 24
    for s in starts:
        hours[int(s // 3600) % 24] += 1
    days = max(1, math.ceil((max(starts) - min(starts)) / 86400)) if starts else 1
    return [count / days for count in hours]


def scenario_for(
    traffic: FeatureTraffic, cost: FeatureCost, deadline_h: float
) -> tuple[Scenario, str] | tuple[None, str]:
    """The lab scenario of one feature at one deadline, or None and why it cannot be simulated."""
    dominant = cost.dominant_model()
    if dominant is None:
        return None, "no priced model"
    provider, model = dominant
    lab_provider = SIMULATED.get(provider)
    if lab_provider is None:
        return None, f"the policy lab simulates OpenAI and Anthropic lanes, not {provider}"
    profile = hourly_profile(traffic.starts)
    per_day = sum(profile)
    scale = min(1.0, SAMPLE_JOBS_PER_DAY / per_day) if per_day else 1.0
    model_cost = cost.by_model[dominant]
    usage = [usage for (_, p, m), usage, _ in traffic.groups() if (p, m) == dominant]
    inputs = sum(u.input_tokens for u in usage)
    cached = sum(u.cache_read_tokens for u in usage)
    lane = LaneScenario(
        provider=lab_provider,
        model=model,
        pattern=[rate * scale for rate in profile],
        deadline_h=deadline_h,
        input_tokens=round(inputs / model_cost.calls),
        output_tokens=round(model_cost.output_tokens / model_cost.calls),
        cached_share=cached / inputs if inputs else 0.0,
        turnaround=TURNAROUND,
    )
    seed = zlib.crc32(traffic.feature.encode())  # the same feature draws the same arrivals every run
    return Scenario(duration_h=24, seed=seed, tick_s=TICK_S, lanes=[lane]), ""


def simulate(
    traffic: FeatureTraffic, cost: FeatureCost, settings: Settings, pricing: Pricing
) -> tuple[dict[str, DeadlineOutcome] | None, str]:
    """``{"1h": ..., "4h": ..., "24h": ...}`` for one feature, or None and the reason why not."""
    out: dict[str, DeadlineOutcome] = {}
    for deadline_h in DEADLINES_H:
        scenario, why = scenario_for(traffic, cost, deadline_h)
        if scenario is None:
            return None, why
        result = engine.run_policy(scenario, settings, pricing, "batchshift")
        figures = result.as_dict()
        if not figures["jobs"]:
            return None, "too few calls a day to simulate"
        out[f"{deadline_h}h"] = DeadlineOutcome(
            deadline_h,
            figures["on_time_ratio"],
            figures["saved_ratio"],
            cost.total.list_usd * figures["saved_ratio"],
        )
    return out, ""
