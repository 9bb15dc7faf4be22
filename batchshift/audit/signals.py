"""Whether a feature's traffic could wait for a batch: each signal read from the traffic, with reasons.

Signals, each reported whatever it says: streaming (a caller reading tokens as they arrive is a
person waiting), the arrival pattern (scheduled bursts point to jobs; a daily curve to people),
caller tags (``nightly``, ``backfill``, ``eval``... against ``chat``, ``interactive``...), and the
latency callers already wait. A user's rule (:mod:`.rules`) overrides them all. Without one,
streaming most calls rules a feature out; otherwise signals for and against are counted, and a tie
(including no signal at all) leaves eligibility unknown (None) rather than guessing.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from batchshift.audit.rules import Rule
from batchshift.audit.traffic import FeatureTraffic

Pattern = Literal["scheduled bursts", "user-driven diurnal", "steady", "too short to tell"]

STREAMING_SHARE = 0.5  # more than this share of calls streamed: someone reads the answer live
BURST_FILL = 0.25  # calls filling under a quarter of the minutes random arrivals would: bursts
DAY_HOURS = 12  # the busiest half-day of the hour-of-day profile...
DIURNAL_SHARE = 0.7  # ...holding this share of calls, without bursts: a daily curve, like people
MIN_SPAN_S = 6 * 3600  # shorter logs, or fewer calls, tell no arrival pattern
MIN_CALLS = 20
PATIENT_WAIT_S = 30.0  # callers already waiting this long at the median tolerate more
BATCH_WORDS = frozenset(
    {"batch", "offline", "nightly", "cron", "scheduled", "backfill", "eval", "evals", "etl", "bulk", "async",
     "report", "reports", "pipeline", "job", "jobs"}
)  # fmt: skip
LIVE_WORDS = frozenset(
    {"interactive", "chat", "realtime", "live", "ui", "frontend", "user-facing", "copilot"}
)
NAMING_TAGS = ("feature:", "caller:")
_WORD = re.compile(r"[a-z0-9]+(?:-facing)?")


@dataclass(slots=True)
class Signals:
    """What the traffic says about one feature, and the verdict with its reasons."""

    streamed_share: float | None  # None: the log does not say
    pattern: Pattern
    minute_fill: float  # minutes holding a call over those random arrivals would fill
    day_share: float  # calls in the busiest 12 hours of the hour-of-day profile
    median_wait_s: float | None
    batch_tags: list[str] = field(default_factory=list)
    live_tags: list[str] = field(default_factory=list)
    rule: Rule | None = None
    eligible: bool | None = None
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "streamed_share": None if self.streamed_share is None else round(self.streamed_share, 4),
            "arrival_pattern": self.pattern,
            "minute_fill": round(self.minute_fill, 4),
            "day_share": round(self.day_share, 4),
            "median_wait_s": None if self.median_wait_s is None else round(self.median_wait_s, 3),
            "batch_tags": self.batch_tags,
            "live_tags": self.live_tags,
            "rule": None if self.rule is None else self.rule.model_dump(),
        }


def arrival_pattern(starts: list[float]) -> tuple[Pattern, float, float]:
    """(pattern, minute fill, day share) of arrival times in Unix seconds.

    The minute fill is the number of minutes of the log's span holding a call, over the number that
    as many calls arriving independently at random would be expected to fill (M (1 - e^(-n/M))):
    far below 1 when calls come in scheduled bursts, whether there are a hundred calls or a million.
    """
    if not starts:
        return "too short to tell", 1.0, 0.0
    first, last = min(starts), max(starts)
    span_minutes = int((last - first) // 60) + 1
    occupied = len({int((s - first) // 60) for s in starts})
    expected = span_minutes * (1 - math.exp(-len(starts) / span_minutes))
    fill = occupied / expected
    hours = [0] * 24
    for s in starts:
        hours[int(s // 3600) % 24] += 1
    day = max(sum(hours[(h + i) % 24] for i in range(DAY_HOURS)) for h in range(24)) / len(starts)
    if last - first < MIN_SPAN_S or len(starts) < MIN_CALLS:
        return "too short to tell", fill, day
    if fill <= BURST_FILL:
        return "scheduled bursts", fill, day
    if day >= DIURNAL_SHARE:
        return "user-driven diurnal", fill, day
    return "steady", fill, day


def _tag_words(tags: Counter[str], callers: set[str], vocabulary: frozenset[str]) -> list[str]:
    """The tags and callers one of whose words is in ``vocabulary`` (the tags naming the feature and
    caller are not signals: the caller is matched by name, the feature only by the user's rules)."""
    named = [t for t in tags if not t.startswith(NAMING_TAGS)] + sorted(callers)
    return sorted({t for t in named if vocabulary & set(_WORD.findall(t.lower()))})


def read(traffic: FeatureTraffic, rule: Rule | None) -> Signals:
    """Every signal of one feature, its verdict and the reasons for it."""
    streamed = traffic.streamed / traffic.stream_known if traffic.stream_known else None
    pattern, fill, day = arrival_pattern(traffic.starts)
    wait = statistics.median(traffic.latencies_ms) / 1000 if traffic.latencies_ms else None
    callers = {caller for caller, _, _ in traffic.usage}
    out = Signals(
        streamed_share=streamed,
        pattern=pattern,
        minute_fill=fill,
        day_share=day,
        median_wait_s=wait,
        batch_tags=_tag_words(traffic.tags, callers, BATCH_WORDS),
        live_tags=_tag_words(traffic.tags, callers, LIVE_WORDS),
        rule=rule,
    )
    for_, against = _weigh(out)
    if rule is not None:
        out.eligible = rule.tolerance_h > 0
        verdict = f"tolerates {rule.tolerance_h:g} h" if out.eligible else "must stay synchronous"
        out.reasons.insert(0, f"rule {rule.feature!r}: {verdict}")
    elif streamed is not None and streamed > STREAMING_SHARE:
        out.eligible = False
    elif for_ != against:
        out.eligible = for_ > against
    return out


def _weigh(out: Signals) -> tuple[int, int]:
    """Append each signal's reason to ``out.reasons``; count the signals for and against batching."""
    for_, against = 0, 0
    reasons = out.reasons
    if out.streamed_share is None:
        reasons.append("streaming: not logged")
    elif out.streamed_share > STREAMING_SHARE:
        against += 1
        reasons.append(f"streaming: {out.streamed_share:.0%} of calls stream (someone reads the answer live)")
    else:
        reasons.append(f"streaming: {out.streamed_share:.0%} of calls stream")
    if out.pattern == "scheduled bursts":
        for_ += 1
        reasons.append(
            f"arrivals: scheduled bursts (calls fill {out.minute_fill:.0%} of the minutes random arrivals would)"
        )
    elif out.pattern == "user-driven diurnal":
        against += 1
        reasons.append(
            f"arrivals: a daily curve like user traffic ({out.day_share:.0%} in the busiest 12 hours)"
        )
    elif out.pattern == "steady":
        reasons.append(
            f"arrivals: steady (calls fill {out.minute_fill:.0%} of the minutes random arrivals would)"
        )
    else:
        reasons.append("arrivals: under 20 calls or 6 hours of log, too few to tell a pattern")
    if out.batch_tags:
        for_ += 1
        reasons.append(f"tags: {', '.join(out.batch_tags[:5])} suggest offline work")
    if out.live_tags:
        against += 1
        reasons.append(f"tags: {', '.join(out.live_tags[:5])} suggest someone waiting")
    if out.median_wait_s is None:
        reasons.append("latency: not logged")
    elif out.median_wait_s >= PATIENT_WAIT_S:
        for_ += 1
        reasons.append(f"latency: callers already wait {out.median_wait_s:.0f} s at the median")
    else:
        reasons.append(f"latency: callers wait {out.median_wait_s:.1f} s at the median")
    return for_, against
