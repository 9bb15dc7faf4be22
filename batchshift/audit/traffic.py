"""Each feature's traffic gathered in one pass over the calls: what the signals and prices need.

Usage is summed per (caller, provider, model): prices are linear in tokens, so pricing the sums
costs the same as pricing each call and takes one lookup per group instead of one per call.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from batchshift.audit.calls import Call
from scheduler.costs.pricing import Usage

GroupKey = tuple[str, str, str]  # (caller, provider, model)


@dataclass(slots=True)
class FeatureTraffic:
    """One feature's calls, reduced to arrival times, waits, streaming, tags and summed usage."""

    feature: str
    calls: int = 0
    starts: list[float] = field(default_factory=list)  # Unix seconds
    latencies_ms: list[float] = field(default_factory=list)  # of the calls whose log gives one
    streamed: int = 0
    stream_known: int = 0
    tags: Counter[str] = field(default_factory=Counter)
    usage: dict[GroupKey, list[int]] = field(default_factory=dict)  # summed Usage fields, and calls

    def add(self, call: Call) -> None:
        self.calls += 1
        self.starts.append(call.start_s)
        if call.latency_ms is not None:
            self.latencies_ms.append(call.latency_ms)
        if call.stream is not None:
            self.stream_known += 1
            self.streamed += call.stream
        self.tags.update(call.tags)
        sums = self.usage.setdefault((call.caller, call.provider, call.model), [0] * 6)
        for i, value in enumerate(call.usage):
            sums[i] += value
        sums[5] += 1

    def groups(self) -> list[tuple[GroupKey, Usage, int]]:
        """(caller, provider, model), summed usage and calls, largest first."""
        out = [(key, Usage(*sums[:5]), sums[5]) for key, sums in self.usage.items()]
        return sorted(out, key=lambda g: (-g[2], g[0]))

    @property
    def input_tokens(self) -> int:
        return sum(s[0] for s in self.usage.values())

    @property
    def output_tokens(self) -> int:
        return sum(s[1] for s in self.usage.values())


def gather(calls: Iterable[Call], features: dict[str, FeatureTraffic]) -> int:
    """Add the calls to ``features`` (by feature name); returns how many there were."""
    count = 0
    for call in calls:
        traffic = features.get(call.feature)
        if traffic is None:
            traffic = features[call.feature] = FeatureTraffic(call.feature)
        traffic.add(call)
        count += 1
    return count
