"""The turnaround model: how likely a batch is still running after ``t`` seconds, from every batch seen.

Ended batches are observations; batches still in flight are censored ones (they took at least their
elapsed time). The survival curve is the Kaplan–Meier estimate over both (its steps smoothed
log-linearly) up to the slowest ended batch, and beyond it a log-normal fitted to the ended batches, scaled to join the estimate: a batch
slower than anything seen is judged by that tail, never sent to the completion window's end (in a
sliding window, record-slow batches are common, and every flip that caused would pay twice).

Until a lane has ``min_samples`` ended batches, a prior (a log-normal whose ``prior_quantile`` is the
configured prior turnaround, so planning with the prior plans with that turnaround) is mixed in with a weight that falls to zero as history arrives. A prior no tighter
than the provider's completion window says nothing: such a model is *blind* and predicts nothing.

Everything is a pure function of the samples, so the SLO tracker and the simulator share it.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

# The narrowest spread the fitted tail may have (log-seconds): a handful of near-equal batches must
# not make a slightly slower one look impossible.
SIGMA_FLOOR = 0.25
# The spread of the prior around its median turnaround (log-seconds): wide, it is only a guess.
PRIOR_SIGMA = 1.0
# Turnarounds are searched up to this many completion windows (a batch ends by its window, bar bugs).
SEARCH_WINDOWS = 4.0
_SQRT2 = math.sqrt(2.0)


def _log_sf_normal(z: float) -> float:
    """log P(Z > z) for a standard normal, accurate far into the tail."""
    if z < 5.0:
        return math.log(0.5 * math.erfc(z / _SQRT2))
    # Asymptotic expansion of the Mills ratio: erfc underflows long before the log does.
    return -0.5 * z * z - math.log(z * math.sqrt(2 * math.pi)) + math.log1p(-1 / (z * z) + 3 / z**4)


def _z(q: float) -> float:
    """The standard normal's ``q`` quantile."""
    return NormalDist().inv_cdf(q)


@dataclass(frozen=True, slots=True)
class LogNormal:
    """A log-normal in seconds: ``mu`` and ``sigma`` of the log."""

    mu: float
    sigma: float

    @classmethod
    def fit(cls, samples: Sequence[float]) -> LogNormal:
        """Moments of the log of positive samples, the spread kept at least :data:`SIGMA_FLOOR`."""
        logs = [math.log(max(s, 1e-3)) for s in samples]
        mu = sum(logs) / len(logs)
        var = sum((x - mu) ** 2 for x in logs) / max(len(logs) - 1, 1)
        return cls(mu, max(math.sqrt(var), SIGMA_FLOOR))

    def log_sf(self, t: float) -> float:
        """log P(T > t)."""
        if t <= 0:
            return 0.0
        return _log_sf_normal((math.log(t) - self.mu) / self.sigma)


@dataclass(frozen=True, slots=True)
class TurnaroundModel:
    """Survival of batch turnaround (seconds) from ended and in-flight batches, with tail and prior."""

    ended: tuple[float, ...]  # sorted
    km_times: tuple[float, ...]  # event times of the Kaplan–Meier steps, ascending
    km_log_sf: tuple[float, ...]  # log S at each step's midpoint (the knots)
    tail: LogNormal | None  # fitted to the ended batches; None without any
    tail_start: float  # the slowest ended batch: the tail takes over there
    tail_base: float  # log S at the last knot, what the tail is scaled to join
    prior: LogNormal | None  # None: no informative prior
    prior_weight: float  # 0 once history has min_samples batches
    window_s: float
    _quantiles: dict[float, float] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(
        cls,
        ended: Sequence[float],
        in_flight: Sequence[float],
        *,
        prior_s: float,
        window_s: float,
        min_samples: int,
        prior_quantile: float = 0.5,
    ) -> TurnaroundModel:
        """The model from ended turnarounds and the elapsed times of batches still in flight."""
        events = sorted(max(s, 1e-3) for s in ended)
        censored = sorted(e for e in in_flight if e > 0)
        # Knots of the Kaplan–Meier curve, each at its step's midpoint (the mean of S just before and
        # just after), joined linearly in log S: between two observed ends the chance of ending is
        # spread over the gap instead of being nil (a step curve would call a batch in a gap doomed).
        times: list[float] = []
        log_sfs: list[float] = []
        s_before = 1.0
        i = j = 0
        n_at_risk = len(events) + len(censored)
        while i < len(events):
            t = events[i]
            while j < len(censored) and censored[j] < t:  # censored before t leave without an event
                n_at_risk -= 1
                j += 1
            d = 0
            while i < len(events) and events[i] == t:
                d += 1
                i += 1
            s_after = s_before * (1 - d / n_at_risk)
            times.append(t)
            log_sfs.append(math.log((s_before + s_after) / 2))
            s_before = s_after
            n_at_risk -= d
        informative = prior_s < window_s
        weight = max(0.0, (min_samples - len(events)) / min_samples) if informative else 0.0
        return cls(
            ended=tuple(events),
            km_times=tuple(times),
            km_log_sf=tuple(log_sfs),
            tail=LogNormal.fit(events) if events else None,
            tail_start=events[-1] if events else 0.0,
            tail_base=log_sfs[-1] if log_sfs else 0.0,
            prior=LogNormal(math.log(prior_s) - PRIOR_SIGMA * _z(prior_quantile), PRIOR_SIGMA)
            if informative
            else None,
            prior_weight=weight if events else (1.0 if informative else 0.0),
            window_s=window_s,
        )

    @property
    def blind(self) -> bool:
        """Nothing to go on: no ended batch and no prior tighter than the completion window."""
        return not self.ended and self.prior is None

    def _data_log_sf(self, t: float) -> float:
        if self.tail is None:
            return 0.0
        if t < self.tail_start:
            k = bisect.bisect_right(self.km_times, t)
            t1, v1 = self.km_times[k], self.km_log_sf[k]
            if k == 0:
                # Before the fastest batch seen: the fitted shape, scaled to meet the first knot.
                head = self.tail.log_sf(t1)
                return v1 * self.tail.log_sf(t) / head if head < 0 else v1 * t / t1
            t0, v0 = self.km_times[k - 1], self.km_log_sf[k - 1]
            return v0 + (v1 - v0) * (t - t0) / (t1 - t0)
        return self.tail_base + self.tail.log_sf(t) - self.tail.log_sf(self.tail_start)

    def log_sf(self, t: float) -> float:
        """log P(turnaround > t)."""
        if self.prior is None or self.prior_weight == 0:
            return self._data_log_sf(t) if not self.blind else 0.0
        prior = self.prior_weight * math.exp(self.prior.log_sf(t))
        data = (1 - self.prior_weight) * math.exp(self._data_log_sf(t)) if self.ended else 0.0
        total = prior + data
        return math.log(total) if total > 0 else -math.inf

    def sf(self, t: float) -> float:
        """P(turnaround > t)."""
        return math.exp(self.log_sf(t))

    def p_running(self, elapsed_s: float, at_s: float) -> float:
        """P(a batch in flight ``elapsed_s`` seconds is still running at ``at_s`` seconds after its start)."""
        if self.blind:
            return 1.0
        if at_s <= elapsed_s:
            return 1.0
        base = self.log_sf(elapsed_s)
        if base == -math.inf:
            return 0.0 if self.tail is None else self._tail_ratio(elapsed_s, at_s)
        return min(1.0, math.exp(self.log_sf(at_s) - base))

    def _tail_ratio(self, elapsed_s: float, at_s: float) -> float:
        assert self.tail is not None  # noqa: S101  # only reached with ended batches
        return math.exp(self.tail.log_sf(at_s) - self.tail.log_sf(elapsed_s))

    def quantile_after(self, elapsed_s: float, q: float) -> float:
        """Total turnaround by which a batch in flight ``elapsed_s`` seconds has ended with probability ``q``.

        A blind model answers the completion window (or the elapsed time, once past it).
        """
        if elapsed_s <= 0:
            return self.quantile(q)  # a batch not yet started: memoised
        return self._quantile_after(elapsed_s, q)

    def _quantile_after(self, elapsed_s: float, q: float) -> float:
        if self.blind:
            return max(self.window_s, elapsed_s)
        base = self.log_sf(elapsed_s)
        hi = max(self.window_s, elapsed_s) * SEARCH_WINDOWS
        if base == -math.inf:
            return elapsed_s if self.tail is None else self._tail_quantile_after(elapsed_s, q, hi)
        target = base + math.log(1.0 - q)
        if self.log_sf(hi) > target:
            return hi
        # Bisection in log-time (turnarounds span milliseconds to days), to 0.1 %.
        log_lo, log_hi = math.log(max(elapsed_s, 1e-3)), math.log(hi)
        while log_hi - log_lo > 1e-3:
            mid = 0.5 * (log_lo + log_hi)
            if self.log_sf(math.exp(mid)) > target:
                log_lo = mid
            else:
                log_hi = mid
        return max(math.exp(log_hi), elapsed_s)

    def _tail_quantile_after(self, elapsed_s: float, q: float, hi: float) -> float:
        assert self.tail is not None  # noqa: S101  # only reached with ended batches
        target = self.tail.log_sf(elapsed_s) + math.log(1.0 - q)
        log_lo, log_hi = math.log(max(elapsed_s, 1e-3)), math.log(hi)
        while log_hi - log_lo > 1e-3:
            mid = 0.5 * (log_lo + log_hi)
            if self.tail.log_sf(math.exp(mid)) > target:
                log_lo = mid
            else:
                log_hi = mid
        return max(math.exp(log_hi), elapsed_s)

    def quantile(self, q: float) -> float:
        """The ``q`` quantile of turnaround for a batch not yet started (memoised: asked once per batch)."""
        found = self._quantiles.get(q)
        if found is None:
            found = self._quantiles[q] = self._quantile_after(0.0, q)
        return found
