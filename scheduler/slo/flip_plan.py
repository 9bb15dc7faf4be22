"""The flip decision as a pure function: which waiting jobs must leave the batch lane now.

A job waits on a *source*: a batch in flight, or the lane queue (whose next batch starts at the
next flush). Its latest safe flip time is::

    deadline − sync margin − drain time

where the sync margin is the sync lane's latency at a high quantile times the retries allowed, and
the drain time is what the sync lane needs, at the provider's rate and concurrency limits, to serve
every job already queued for sync and every *at-risk* job due no later than this one, itself
included. A job counts as at risk when the model gives its source at least ``risk_probability`` of
still running at the job's deadline less the margin, or when its batch is overdue (running longer
than ``overdue_quantile`` of batches): a healthy lane's thousands of waiting jobs do not make the
sync lane look full, while a stalled lane's do.

A job flips when its latest safe time arrives (within the next ``LEAD_TICKS`` ticks) and its source
has not ended, or earlier when the model gives its source more than ``early_probability`` of still
running at the job's deadline less the margin. Everything else stays on the batch. Jobs of an ended
batch (results on their way into the ledger) flip only just in time, in case ingestion keeps failing.

Because the latest safe time only grows with the deadline up to each at-risk job, the decision for
every source is one deadline horizon: flip the jobs due before it. Redis reads one range per source
(:mod:`scheduler.slo.flips`); the simulator (:mod:`batchshift.simulate`) bisects a sorted list.

A flip at the latest safe time is only as good as the batch status it is decided on: a batch polled
every few minutes may have ended since its last poll. So a batch in flight is polled once more just
before its earliest waiting job's latest safe time (:func:`pulled_poll_ms`, from
:meth:`Plan.first_flip_ms`); a batch seen ended is not flipped at that moment, and one seen running is.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from config.settings import Settings
from scheduler.slo.survival import TurnaroundModel

# Ticks of lead: a job flips at the last tick that still precedes its safe time by a tick, since
# the flip itself (and the sync dispatch after it) happens on the next tick.
LEAD_TICKS = 2
# A batch is polled this long before its earliest waiting job's latest safe time, and at least one
# tick before: the poll's answer, and the ingestion of a batch it saw end, must be in by the tick
# that would flip the job. Production ticks are a second; a poll is picked up, answered and its
# results streamed into the ledger in seconds, not in one tick.
POLL_LEAD_TICKS = 1
POLL_LEAD_MIN_S = 15.0


@dataclass(frozen=True, slots=True)
class Source:
    """Jobs waiting on one batch (or on the lane queue, ``key=None``) and what is known of it."""

    key: Hashable  # batch id; None for the lane queue
    start_ms: int  # submission (or, for the queue, the next flush)
    ended: bool = False  # the batch ended; its results are on their way


@dataclass(frozen=True, slots=True)
class SyncLane:
    """The sync lane a flipped job joins."""

    margin_s: float  # latency at a high quantile × retry allowance
    rate_per_s: float  # jobs per second it serves at its configured limits


@dataclass(frozen=True, slots=True)
class Policy:
    """The knobs of the decision (``settings.slo``)."""

    risk_probability: float
    early_probability: float
    tick_s: float
    overdue_quantile: float = 0.95  # a batch running longer than this share of batches is overdue

    @classmethod
    def for_settings(cls, settings: Settings) -> Policy:
        """The production knobs: ``settings.slo`` and the tick interval."""
        slo = settings.slo
        return cls(
            slo.flip_risk_probability,
            slo.flip_early_probability,
            settings.scheduler.tick_interval_s,
            overdue_quantile=slo.turnaround_quantile,
        )


def sync_rate(sync_rpm: int | None, sync_concurrency: int, latency_s: float) -> float:
    """Jobs per second a sync lane serves: the tighter of its rate limit and concurrency ÷ latency."""
    by_concurrency = sync_concurrency / max(latency_s, 1e-3)
    return by_concurrency if sync_rpm is None else min(sync_rpm / 60, by_concurrency)


def _running_horizon_ms(
    model: TurnaroundModel, source: Source, now_ms: int, margin_s: float, p: float
) -> float:
    """Jobs of ``source`` due before this see it still running at their deadline less the margin
    with probability above ``p``."""
    if source.ended or model.blind:
        return -math.inf
    elapsed = max(0.0, (now_ms - source.start_ms) / 1000)
    total = model.quantile_after(elapsed, 1 - p)
    return source.start_ms + (total + margin_s) * 1000


def risk_horizon_ms(
    model: TurnaroundModel, source: Source, now_ms: int, margin_s: float, policy: Policy
) -> float:
    """Jobs of ``source`` due before this count as at risk (they load the sync lane's drain).

    Every job of an overdue batch (running longer than ``overdue_quantile`` of batches) counts: the
    model's tail is fitted to batches that ended, and a stalled one may be nothing like them.
    """
    if source.ended:
        return -math.inf
    elapsed = max(0.0, (now_ms - source.start_ms) / 1000)
    if elapsed > model.quantile(policy.overdue_quantile):
        return math.inf
    return _running_horizon_ms(model, source, now_ms, margin_s, policy.risk_probability)


def safe_horizon_ms(at_risk: Sequence[int], now_ms: int, sync: SyncLane, tick_s: float) -> float:
    """Jobs due before this have reached their latest safe flip time (sorted ``at_risk`` deadlines, ms).

    With ``A(d)`` at-risk jobs due by ``d``, a job due at ``d`` must flip once
    ``now + lead ≥ d − margin − (A(d) + 1) / rate``. Between two at-risk deadlines ``A`` is constant,
    so each gap contributes the deadlines up to ``now + lead + margin + (A + 1) / rate``.
    """
    reach_ms = now_ms + (LEAD_TICKS * tick_s + sync.margin_s) * 1000
    per_job_ms = 1000 / sync.rate_per_s
    horizon = reach_ms + per_job_ms  # no at-risk job ahead: the job alone
    for k, deadline in enumerate(at_risk):
        # On [deadline, next): k + 1 at-risk jobs due by then, plus the job itself.
        limit = reach_ms + (k + 2) * per_job_ms
        if limit <= deadline:
            continue
        upper = at_risk[k + 1] if k + 1 < len(at_risk) else math.inf
        horizon = max(horizon, min(upper, limit))
    return horizon


@dataclass(slots=True)
class Plan:
    """One tick's decision for a lane: per source, the deadline before which its jobs flip now; and
    the at-risk load it was made with, which says when a job still waiting will flip."""

    horizons: dict[Hashable, float]
    at_risk: Sequence[int]  # sorted deadlines (ms) of the jobs loading the sync lane's drain
    sync: SyncLane
    tick_s: float
    now_ms: int = 0
    # Per batch in flight, its early-flip horizon a poll lead from now: jobs due before it flip early soon.
    early_soon: dict[Hashable, float] = field(default_factory=dict)
    _later: list[float] | None = None  # per at-risk job, the earliest flip time of it or any due after it

    def first_flip_ms(self, deadline_ms: int, key: Hashable = None) -> float:
        """When a job due at ``deadline_ms`` (waiting on source ``key``) flips at this load: now, if
        its batch is about to be judged almost surely late; else its latest safe flip time, the
        inverse of :func:`safe_horizon_ms`, so the earliest ``now`` whose horizon passes it.

        Its own moment is ``deadline − lead − margin − (A + 1) / rate``; an at-risk job due later
        whose own moment comes first carries the horizon past this one with it.
        """
        if key is not None and self.early_soon.get(key, -math.inf) > deadline_ms:
            return self.now_ms
        offset_ms = (LEAD_TICKS * self.tick_s + self.sync.margin_s) * 1000
        per_job_ms = 1000 / self.sync.rate_per_s
        ahead = count_below(self.at_risk, deadline_ms + 1)
        own = deadline_ms - offset_ms - (ahead + 1) * per_job_ms
        if ahead == len(self.at_risk):
            return own
        if self._later is None:
            # At-risk job k flips once its gap's limit passes it: at deadline − offset − (k + 2) / rate.
            moments = [d - offset_ms - (k + 2) * per_job_ms for k, d in enumerate(self.at_risk)]
            self._later = list(itertools.accumulate(reversed(moments), min))[::-1]
        return min(own, self._later[ahead])


def plan(
    model: TurnaroundModel,
    sources: Sequence[Source],
    deadlines: Sequence[Sequence[int]],
    sync_deadlines: Sequence[int],
    sync: SyncLane,
    policy: Policy,
    now_ms: int,
) -> Plan:
    """Per source, the deadline before which its jobs flip now (:attr:`Plan.horizons`).

    ``deadlines[i]`` are the sorted deadlines of the jobs waiting on ``sources[i]`` (at least those
    due before its risk horizon); ``sync_deadlines`` those already queued for sync.
    """
    risky: list[Sequence[int]] = [sync_deadlines]
    for source, due in zip(sources, deadlines, strict=True):
        cut = risk_horizon_ms(model, source, now_ms, sync.margin_s, policy)
        if cut > -math.inf:
            risky.append(due[: count_below(due, cut)])
    at_risk = sorted(itertools.chain.from_iterable(risky))  # sorted runs: Timsort merges them in C
    safe = safe_horizon_ms(at_risk, now_ms, sync, policy.tick_s)
    just_in_time = now_ms + (LEAD_TICKS * policy.tick_s + sync.margin_s) * 1000
    out: dict[Hashable, float] = {}
    soon: dict[Hashable, float] = {}
    ahead_ms = now_ms + int(poll_lead_ms(policy.tick_s))
    for source in sources:
        if source.ended:
            out[source.key] = just_in_time
            continue
        early = _running_horizon_ms(model, source, now_ms, sync.margin_s, policy.early_probability)
        out[source.key] = max(safe, early)
        if source.key is not None:
            soon[source.key] = _running_horizon_ms(
                model, source, ahead_ms, sync.margin_s, policy.early_probability
            )
    return Plan(out, at_risk, sync, policy.tick_s, now_ms, soon)


def poll_lead_ms(tick_s: float) -> float:
    """How long before a job's latest safe time its batch is polled once more."""
    return max(POLL_LEAD_TICKS * tick_s, POLL_LEAD_MIN_S) * 1000


@dataclass(frozen=True, slots=True)
class PollState:
    """What the batch record says of a batch's polls (ms)."""

    submitted_ms: int
    next_poll_ms: int  # when it is next polled (its score in the poll schedule)
    running_seen_ms: int | None = None  # the last poll that saw it running
    pulled_ms: int | None = None  # the last poll brought forward by :func:`pulled_poll_ms`

    def last_ms(self, now_ms: int) -> int:
        """The last poll asked for: one pulled to a time now past counts, answered or not."""
        pulled = self.pulled_ms if self.pulled_ms is not None and self.pulled_ms <= now_ms else 0
        return max(self.submitted_ms, self.running_seen_ms or 0, pulled)


def pulled_poll_ms(first_flip_ms: float, polls: PollState, now_ms: int, lead_ms: float) -> int | None:
    """When a batch in flight must next be polled so that its earliest waiting job's flip (at
    ``first_flip_ms``) is decided on fresh status; None when its schedule already does that.

    The poll goes ``lead_ms`` before the flip, and never sooner than ``lead_ms`` after the last poll
    brought forward: a late batch whose jobs reach their moments one after another is polled at most
    once a lead, not every tick, and a poll that fails is not asked for again at once. A flip
    already due (its job held by a budget, or past the tick's flip budget) gets one poll, now.
    """
    target = first_flip_ms - lead_ms
    if polls.last_ms(now_ms) >= target:
        return None  # a poll after the target was taken (or asked for): the flip is decided on it
    pulled = polls.pulled_ms if polls.pulled_ms is not None and polls.pulled_ms <= now_ms else None
    at = max(int(target), now_ms, -1 if pulled is None else pulled + int(lead_ms))
    return at if at < polls.next_poll_ms else None


def count_below(sorted_values: Sequence[int], limit: float) -> int:
    """How many of ``sorted_values`` are below ``limit``."""
    lo, hi = 0, len(sorted_values)
    while lo < hi:
        mid = (lo + hi) // 2
        if sorted_values[mid] < limit:
            lo = mid + 1
        else:
            hi = mid
    return lo
