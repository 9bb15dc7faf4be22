"""Lane health: recent batch turnarounds and sync latencies of a lane, and the quantiles drawn from them.

Workers push one sample per ended batch (submission to the moment its end was observable, on our
own clock: :func:`observed_turnaround_s`) and per sync call into capped Redis
lists (:func:`scheduler.keys.lane_turnarounds`, :func:`scheduler.keys.lane_sync_latencies`), each
entry ``"<end_ms>:<seconds>"``, newest first, written by :func:`scheduler.ledger.samples.push_sample` and read by
:func:`scheduler.ledger.samples.parse_sample` (the format's one writer and one reader). Here a window bounded by count
(``settings.slo.history_size``) and by age (``settings.slo.history_max_age_s``) is read back. Until a
lane has ``settings.slo.min_samples`` samples, its turnaround is the prior
(``settings.slo.prior_turnaround_s``, else the provider's completion window) and its sync latency is
``settings.slo.default_sync_latency_s``: with no evidence we assume the slow end, so deadlines win.
Turnaround quantiles come from the survival model (:mod:`scheduler.slo.survival`), which also counts
the batches still in flight (:meth:`LaneHealth.with_in_flight`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from config.settings import Settings
from scheduler.ledger import keys
from scheduler.ledger.samples import parse_sample
from scheduler.slo.survival import TurnaroundModel

# Sync latencies are judged at their tail: a retry allowance on top of p99 is the sync margin.
SYNC_QUANTILE = 0.99
# The "usual" turnaround a lagging lane is compared with.
USUAL_QUANTILE = 0.5
# The shortest turnaround recorded: one millisecond, the clock's resolution (a sample is never 0).
MIN_TURNAROUND_S = 0.001


# Turnaround models by their inputs: a model is a pure function of them, so lanes (and ticks) with
# the same history share one, and its memoised quantiles. Cleared whole when full.
MODEL_CACHE_SIZE = 4096
_models: dict[tuple[tuple[float, ...], tuple[float, ...], float, float, int, float], TurnaroundModel] = {}


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of sorted ``values`` by linear interpolation between closest ranks."""
    if not values:
        raise ValueError("quantile of no values")
    pos = q * (len(values) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (pos - low)


def parse_samples(raw: Sequence[bytes], now_ms: int, max_age_s: float, limit: int) -> list[float]:
    """Seconds of the newest ``limit`` well-formed samples no older than ``max_age_s``, sorted."""
    oldest_ms = now_ms - max_age_s * 1000
    out: list[float] = []
    for entry in raw[:limit]:
        parsed = parse_sample(entry)
        if parsed is None:
            continue  # a malformed sample teaches nothing; skip it rather than fail the tick
        end_ms, value = parsed
        if end_ms >= oldest_ms and value >= 0:
            out.append(value)
    out.sort()
    return out


@dataclass(frozen=True, slots=True)
class LaneHealth:
    """What a lane's recent history says: sorted samples, plus the priors used until there are enough."""

    lane: str
    turnarounds: tuple[float, ...]  # seconds, sorted
    latest_turnaround_s: float | None  # the newest sample, if recent: a lane that just slowed
    sync_latencies: tuple[float, ...]  # seconds, sorted
    prior_turnaround_s: float
    window_s: float  # the provider's completion window: a batch ends by then, one way or another
    default_sync_latency_s: float
    retry_allowance: float
    min_samples: int
    prior_quantile: float = 0.5  # the quantile the prior turnaround stands for (the planning quantile)
    in_flight: tuple[float, ...] = ()  # elapsed seconds of batches still running: censored samples
    model: TurnaroundModel = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        inputs = (
            self.turnarounds,
            self.in_flight,
            self.prior_turnaround_s,
            self.window_s,
            self.min_samples,
            self.prior_quantile,
        )
        model = _models.get(inputs)
        if model is None:
            model = TurnaroundModel.build(
                self.turnarounds,
                self.in_flight,
                prior_s=self.prior_turnaround_s,
                window_s=self.window_s,
                min_samples=self.min_samples,
                prior_quantile=self.prior_quantile,
            )
            if len(_models) >= MODEL_CACHE_SIZE:
                _models.clear()
            _models[inputs] = model
        object.__setattr__(self, "model", model)

    def with_in_flight(self, elapsed_s: Sequence[float]) -> LaneHealth:
        """The same history, with batches in flight ``elapsed_s`` seconds counted as censored samples."""
        return replace(self, in_flight=tuple(elapsed_s))

    @property
    def has_history(self) -> bool:
        """Whether enough turnarounds exist to trust them over the prior."""
        return len(self.turnarounds) >= self.min_samples

    @property
    def blind(self) -> bool:
        """No ended batch, and a prior no tighter than the completion window: the lane knows nothing yet.

        Planning and flipping with the window would send every job with a deadline inside it to sync
        before a single batch could teach the lane its turnaround, so such a lane plans and flips
        just in time instead (see :mod:`scheduler.slo.prediction`).
        """
        return self.model.blind

    def turnaround(self, q: float) -> float:
        """The ``q`` quantile of turnaround from the survival model (the prior on a blind lane)."""
        if self.blind:
            return self.prior_turnaround_s
        return self.model.quantile(q)

    def usual_turnaround(self) -> float:
        """The median turnaround (the prior while history is short): what "lagging" is measured against.

        The prior turnaround itself, not its model's median: the prior stands for the planning
        quantile, and its median would call a batch of just the expected length lagging.
        """
        if not self.has_history:
            return self.prior_turnaround_s
        return self.turnaround(USUAL_QUANTILE)

    def remaining_after(self, elapsed_s: float, q: float) -> float:
        """Total turnaround to expect (at quantile ``q``) for a batch already in flight ``elapsed_s`` seconds.

        Conditioned on having waited: beyond the slowest batch seen, the fitted tail answers (a
        record-slow batch is not assumed to run to the window's end). A blind lane answers its
        prior while the prior lasts, then the window.
        """
        if self.blind:
            return self.prior_turnaround_s if elapsed_s < self.prior_turnaround_s else self.window_s
        return self.model.quantile_after(elapsed_s, q)

    def p_running(self, elapsed_s: float, at_s: float) -> float:
        """P(a batch in flight ``elapsed_s`` seconds has not ended ``at_s`` seconds after its start)."""
        return self.model.p_running(elapsed_s, at_s)

    def sync_latency(self, q: float = SYNC_QUANTILE) -> float:
        """The ``q`` quantile of sync latency, or the configured default while history is short."""
        if len(self.sync_latencies) < self.min_samples:
            return self.default_sync_latency_s
        return quantile(self.sync_latencies, q)

    def sync_margin(self) -> float:
        """Seconds a flipped job needs on the sync lane: p99 latency times the retries we allow."""
        return self.sync_latency() * self.retry_allowance

    def figures(self, quantiles: Sequence[float] = (0.5, 0.95, 0.99)) -> dict[str, float | int | None]:
        """The numbers an operator sees for this lane (API, alert details)."""
        out: dict[str, float | int | None] = {"turnaround_samples": len(self.turnarounds)}
        for q in quantiles:
            name = f"turnaround_p{round(q * 100)}_s"
            out[name] = round(quantile(self.turnarounds, q), 3) if self.turnarounds else None
        out["sync_p99_s"] = round(self.sync_latency(), 3)
        out["sync_margin_s"] = round(self.sync_margin(), 3)
        return out


def prior_for(settings: Settings, lane_provider: str | None) -> tuple[float, float]:
    """(prior turnaround, completion window) in seconds for a lane of ``lane_provider``."""
    provider = settings.providers.get(lane_provider or "")
    window = provider.completion_window_s if provider is not None else 24 * 3600.0
    prior = settings.slo.prior_turnaround_s
    return (window if prior is None else min(prior, window)), window


async def read_health(
    redis: Redis, settings: Settings, lane: str, provider: str | None, now_ms: int
) -> LaneHealth:
    """Read a lane's sample windows from Redis (two list reads, one round trip)."""
    async with redis.pipeline(transaction=False) as pipe:
        queue_health_reads(pipe, settings, lane)
        raw_turn, raw_sync = await pipe.execute()
    return health_from(settings, lane, provider, raw_turn, raw_sync, now_ms)


def queue_health_reads(pipe: Pipeline, settings: Settings, lane: str) -> None:
    """Queue a lane's two sample-list reads on ``pipe`` (their replies go to :func:`health_from`), so
    the SLO step reads every lane's health in the same round trip."""
    size = settings.slo.history_size
    pipe.lrange(keys.lane_turnarounds(lane), 0, size - 1)
    pipe.lrange(keys.lane_sync_latencies(lane), 0, size - 1)


def health_from(
    settings: Settings,
    lane: str,
    provider: str | None,
    raw_turn: Sequence[bytes],
    raw_sync: Sequence[bytes],
    now_ms: int,
) -> LaneHealth:
    """A lane's health from its two sample lists as read (newest first)."""
    slo = settings.slo
    # The newest sample is news only while recent (the shortest burn window): a lane left idle after
    # a slow batch must recover, not stay lagging until that sample leaves the week-long history.
    recent_s = min((r.short_window_s for r in slo.burn_rules), default=slo.sync_share_window_s)
    newest = parse_samples(raw_turn[:1], now_ms, min(recent_s, slo.history_max_age_s), 1)
    return lane_health(
        settings,
        lane,
        provider,
        parse_samples(raw_turn, now_ms, slo.history_max_age_s, slo.history_size),
        parse_samples(raw_sync, now_ms, slo.history_max_age_s, slo.history_size),
        latest_turnaround_s=newest[0] if newest else None,
    )


def lane_health(
    settings: Settings,
    lane: str,
    provider: str | None,
    turnarounds: Sequence[float],
    sync_latencies: Sequence[float],
    *,
    latest_turnaround_s: float | None = None,
    in_flight: Sequence[float] = (),
) -> LaneHealth:
    """A lane's health from its samples (seconds, sorted) with the priors and limits of ``settings``."""
    slo = settings.slo
    prior, window = prior_for(settings, provider)
    return LaneHealth(
        lane=lane,
        turnarounds=tuple(turnarounds),
        latest_turnaround_s=latest_turnaround_s,
        sync_latencies=tuple(sync_latencies),
        prior_turnaround_s=prior,
        window_s=window,
        default_sync_latency_s=slo.default_sync_latency_s,
        retry_allowance=slo.sync_retry_allowance,
        min_samples=slo.min_samples,
        prior_quantile=slo.turnaround_quantile,
        in_flight=tuple(in_flight),
    )


def observed_turnaround_s(submitted_ms: int, running_seen_ms: int | None, ended_seen_ms: int) -> float:
    """Turnaround on our own clock: submission to the midpoint of the last poll that saw the batch
    running and the poll that saw it ended (the end happened somewhere between). Never 0: a
    provider's end timestamp (whole seconds, another clock) can equal its creation time.
    """
    last_running = max(running_seen_ms or submitted_ms, submitted_ms)
    end = (last_running + max(ended_seen_ms, last_running)) / 2
    return max((end - submitted_ms) / 1000, MIN_TURNAROUND_S)
