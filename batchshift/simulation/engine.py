"""The discrete-event run: a scenario's workload against simulated providers, once per policy.

A virtual clock advances ``tick_s`` at a time. Each tick, per lane, in the production order: the
polls due since the last tick are answered; batches whose end a poll has seen are ingested (their
samples go into the lane's history as the worker records them,
:func:`scheduler.health.observed_turnaround_s`); the flip policy moves jobs to the sync lane and
brings forward the poll of a batch whose next one would come after a job's latest safe flip time;
the planner (:func:`scheduler.planner.decide`) flushes the queue into batches, cut into deadline
bands (:func:`scheduler.planner.band_limit_ms`) as the reservation does; the sync lane serves what
it can at its rate and concurrency limits. Nothing here re-implements a decision: ``batchshift`` is
:func:`scheduler.flip_plan.plan` on the lane's :class:`~scheduler.health.LaneHealth` and
:func:`scheduler.flip_plan.pulled_poll_ms` on its batches' polls, the planner and its expected
turnaround are the scheduler's, costs are :class:`scheduler.pricing.Pricing`.

The other policies differ only in their flips: ``oracle`` knows when each batch will end, sees it
end then, and flips exactly the jobs due before that, at their last safe moment (the same
:func:`~scheduler.flip_plan.safe_horizon_ms`, with exactly those jobs at risk); ``batch_only`` never
flips; ``fixed_escalation`` flips every waiting job ``fixed_escalation_h`` before its deadline;
``always_sync`` sends every job to sync on arrival. A flip is *needless* when the job's batch
ended by its deadline (the oracle makes none).

Simulated providers: a batch's turnaround is drawn from the lane's distribution, its clock stops
during stalls, ``expire_share`` of batches expire at the completion window with no results (their
jobs go back to the queue), and its end is seen by the first poll at or after it (the production
poll schedule: the first poll from the lane's turnarounds (``policy.first_poll_s``), growing by
``poll_backoff`` up to ``poll_max_s``, each poll at
its due time, as a worker takes it within a production tick; a poll brought forward at the tick it
falls due, after the tick's flips, as the polls step enqueues it). A batch all of whose jobs flipped is
cancelled and bills nothing; a flipped job whose batch does end is billed twice (duplicate spend).
Random draws come from streams seeded by the scenario's seed and the lane, so runs reproduce and
every policy sees the same arrivals.

Sibling lanes (a lane's ``siblings``): under ``batchshift``, before its flips, a lane whose batch is
stalled (:func:`scheduler.slo.sibling_plan.lags`) moves its queued jobs and its stalled batches'
jobs to the first sibling, in order of preference, that is healthy and whose turnaround fits
each job's deadline (:func:`~scheduler.slo.sibling_plan.destinations`), as the tracker does. A
moved job is the sibling's from then on (its prices, its batches, and it moves no further); one taken from a stalled batch
that ends after all is billed there too (duplicate spend). The lab has no SLO state machine: a
lane lags while a batch of it is stalled. ``batchshift_no_siblings`` is the same run without them.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from batchshift.simulation.outcome import Outcome
from batchshift.simulation.scenario import LaneScenario, Scenario, ScenarioError
from batchshift.simulation.sync_lane import SyncLane
from config.settings import ProviderSettings, SchedulerSettings, Settings
from scheduler.costs.pricing import Pricing, RouteName
from scheduler.costs.tokens import BYTES_PER_TOKEN
from scheduler.planning.lanes import Lane, effective
from scheduler.planning.planner import LaneBacklog, band_limit_ms, decide, pressure_horizon_ms
from scheduler.policy import first_poll_s, next_poll_s
from scheduler.slo import sibling_plan
from scheduler.slo.flip_plan import (
    Plan,
    Policy,
    PollState,
    Source,
    count_below,
    plan,
    poll_lead_ms,
    pulled_poll_ms,
    safe_horizon_ms,
)
from scheduler.slo.health import LaneHealth, lane_health, observed_turnaround_s
from scheduler.slo.prediction import expected_turnaround_s, next_flush_ms, sync_lane

PolicyName = Literal["batchshift", "oracle", "always_sync", "batch_only", "fixed_escalation"]
# The report's name for batchshift's run without sibling lanes (a scenario with siblings only).
NO_SIBLINGS = "batchshift_no_siblings"
MOVED = -2  # a job's ``done`` once it moved to a sibling lane (-1: still waiting)
POLICIES: tuple[PolicyName, ...] = ("batchshift", "oracle", "always_sync", "batch_only", "fixed_escalation")
EPOCH_MS = 1_800_000_000_000  # the virtual clock's start: a fixed instant, so runs reproduce
ENDPOINT = "/v1/chat/completions"
# After the last arrival, the run goes on until every job is done, or this long at most.
DRAIN_LIMIT_MS = 72 * 3600 * 1000


@dataclass(slots=True)
class _Batch:
    id: int
    submitted_ms: int
    end_ms: int  # when it ends at the provider (expired or done)
    expired: bool
    deadlines: list[int]  # of the jobs still waiting on it, sorted
    jobs: list[int]
    next_poll_ms: int
    poll_interval_s: float
    running_seen_ms: int | None = None  # the last poll that saw it running
    pulled_ms: int | None = None  # the last poll brought forward
    observed_ms: int | None = None  # when a poll saw it ended
    flipped: list[int] = field(default_factory=list)
    cancelled: bool = False

    def poll(self, now_ms: int, sched: SchedulerSettings, *, pulled: bool = False) -> None:
        """Answer the polls due by ``now_ms`` as ``poll_batch`` does (running, or ended), each at its
        due time; or, with ``pulled``, the poll brought forward, at ``now_ms``: the polls step
        enqueues it at the tick it falls due, after the tick's flips."""
        while self.observed_ms is None and self.next_poll_ms <= now_ms:
            if (self.next_poll_ms == self.pulled_ms) != pulled:
                return
            at = now_ms if pulled else self.next_poll_ms
            if at >= self.end_ms:
                self.observed_ms = at
                return
            self.running_seen_ms = at
            self.poll_interval_s = next_poll_s(self.poll_interval_s, sched)
            self.next_poll_ms = at + int(self.poll_interval_s * 1000)


@dataclass(slots=True)
class _Prices:
    batch: float
    flex: float
    sync: float


class _LaneRun:
    """One lane under one policy."""

    def __init__(
        self,
        index: int,
        spec: LaneScenario,
        scenario: Scenario,
        settings: Settings,
        policy: PolicyName,
        prices: _Prices,
    ) -> None:
        self.spec = spec
        self.scenario = scenario
        self.settings = settings
        self.policy = policy
        self.prices = prices
        self.provider = provider_name(index, spec)
        self.lane: Lane = effective(settings, self.provider, spec.model, ENDPOINT)
        seed = scenario.seed * 1_000_003 + index
        self.arrival_rng = random.Random(f"arrivals:{seed}")
        self.batch_rng = random.Random(f"batches:{seed}")
        account = settings.providers[self.provider]
        self.sync = SyncLane(spec, random.Random(f"sync:{seed}"), account.flex_latency_s)
        self.window_ms = int(settings.providers[self.provider].completion_window_s * 1000)
        self.end_ms = EPOCH_MS + int(scenario.duration_h * 3_600_000)
        self.next_arrival_ms = EPOCH_MS + self._gap_ms(EPOCH_MS)
        # jobs
        self.arrival: list[int] = []
        self.deadline: list[int] = []
        self.done: list[int] = []  # -1 while waiting
        self.q_deadlines: list[int] = []
        self.q_jobs: list[int] = []
        self.batches: list[_Batch] = []
        self.turnarounds: deque[float] = deque(maxlen=settings.slo.history_size)
        self.sync_latencies: deque[float] = deque(maxlen=settings.slo.history_size)
        self.outcome = Outcome()
        self.siblings: list[_LaneRun] = []  # in order of preference (batchshift with siblings only)
        self.adopted: set[int] = set()  # jobs moved here from a sibling: they move no further
        self.stalls = [
            (EPOCH_MS + int(s.start_h * 3_600_000), EPOCH_MS + int((s.start_h + s.duration_h) * 3_600_000))
            for s in sorted(spec.stalls, key=lambda s: s.start_h)
        ]

    # -- workload ---------------------------------------------------------------------------------

    def _gap_ms(self, at_ms: int) -> int:
        hour = (at_ms - EPOCH_MS) // 3_600_000
        rate = self.spec.rate_per_s(int(hour))
        if rate <= 0:
            return 3_600_000 - (at_ms - EPOCH_MS) % 3_600_000  # nothing this hour: look again next hour
        return max(1, int(self.arrival_rng.expovariate(rate) * 1000))

    def _arrive(self, now_ms: int) -> None:
        while self.next_arrival_ms <= now_ms and self.next_arrival_ms < self.end_ms:
            at = self.next_arrival_ms
            hour = (at - EPOCH_MS) // 3_600_000
            if self.spec.rate_per_s(int(hour)) > 0:
                spec_deadline = self.spec.deadline_h
                hours = (
                    self.arrival_rng.uniform(*spec_deadline)
                    if isinstance(spec_deadline, tuple)
                    else spec_deadline
                )
                job = len(self.arrival)
                self.arrival.append(at)
                self.deadline.append(at + int(hours * 3_600_000))
                self.done.append(-1)
                if self.policy == "always_sync":
                    self.sync.add(self.deadline[job], job)
                else:
                    slot = bisect.bisect_right(self.q_deadlines, self.deadline[job])
                    self.q_deadlines.insert(slot, self.deadline[job])
                    self.q_jobs.insert(slot, job)
            self.next_arrival_ms = at + self._gap_ms(at)

    def adopt(self, arrival_ms: int, deadline_ms: int) -> None:
        """Take a job moved here from a sibling lane: it queues as if it had arrived here."""
        job = len(self.arrival)
        self.arrival.append(arrival_ms)
        self.deadline.append(deadline_ms)
        self.done.append(-1)
        self.adopted.add(job)
        slot = bisect.bisect_right(self.q_deadlines, deadline_ms)
        self.q_deadlines.insert(slot, deadline_ms)
        self.q_jobs.insert(slot, job)

    # -- the simulated batch API --------------------------------------------------------------------

    def _turnaround_s(self) -> float:
        dist = self.spec.turnaround
        if dist.dist == "empirical":
            return self.batch_rng.choice(dist.minutes) * 60
        return math.exp(math.log(dist.median_min * 60) + dist.sigma * self.batch_rng.gauss(0.0, 1.0))

    def _end_ms(self, submitted_ms: int, work_s: float) -> int:
        """When a batch needing ``work_s`` of progress ends, its clock stopped during stalls."""
        t, left = float(submitted_ms), work_s * 1000
        for start, stop in self.stalls:
            if stop <= t:
                continue
            if start > t:
                if t + left <= start:
                    return int(t + left)
                left -= start - t
            t = max(t, stop)
        return int(t + left)

    def _submit(self, now_ms: int, count: int) -> None:
        deadlines, jobs = self.q_deadlines[:count], self.q_jobs[:count]
        del self.q_deadlines[:count]
        del self.q_jobs[:count]
        expired = self.batch_rng.random() < self.spec.expire_share
        end = self._end_ms(now_ms, self._turnaround_s())
        if expired or end > now_ms + self.window_ms:
            expired, end = True, now_ms + self.window_ms
        first_s = first_poll_s(list(self.turnarounds), self.settings.scheduler)  # as poll_batch's first
        batch = _Batch(
            len(self.batches), now_ms, end, expired, deadlines, jobs, now_ms + int(first_s * 1000), first_s
        )
        self.batches.append(batch)

    def _poll(self, now_ms: int, *, pulled: bool = False) -> None:
        sched = self.settings.scheduler
        for batch in self.batches:
            if batch.cancelled:
                continue
            if self.policy == "oracle" and batch.end_ms <= now_ms:
                batch.poll(batch.end_ms, sched)
                batch.observed_ms = batch.end_ms  # it knows: it looks when the batch ends
                continue
            batch.poll(now_ms, sched, pulled=pulled)

    def _ingest(self, now_ms: int) -> None:
        still: list[_Batch] = []
        for batch in self.batches:
            if batch.cancelled:
                continue  # cancelled once its last job flipped: nothing billed, nothing to learn
            seen = batch.observed_ms
            if seen is None or seen > now_ms:
                still.append(batch)
                continue
            self.turnarounds.append(observed_turnaround_s(batch.submitted_ms, batch.running_seen_ms, seen))
            if batch.expired:
                for deadline, job in zip(batch.deadlines, batch.jobs, strict=True):
                    slot = bisect.bisect_right(self.q_deadlines, deadline)
                    self.q_deadlines.insert(slot, deadline)
                    self.q_jobs.insert(slot, job)
                continue
            for job in batch.jobs:
                self._finish(job, seen, "batch")
            self.outcome.duplicate_usd += len(batch.flipped) * self.prices.batch
        self.batches = still

    # -- decisions ----------------------------------------------------------------------------------

    def health(self, now_ms: int) -> LaneHealth:
        return lane_health(
            self.settings,
            self.lane.name,
            self.provider,
            sorted(self.turnarounds),
            sorted(self.sync_latencies),
            in_flight=[(now_ms - b.submitted_ms) / 1000 for b in self.batches if not b.cancelled],
        )

    def _load(self, now_ms: int, health: LaneHealth) -> sibling_plan.LaneLoad:
        """The lane as the failover decision sees it (no SLO state machine here: judged by its batches)."""
        slowest = max(
            ((now_ms - b.submitted_ms) / 1000 for b in self.batches if not b.cancelled), default=0.0
        )
        ended = health.with_in_flight(())  # as the tracker reads it: the batches that ended
        slo = self.settings.slo
        limit = sibling_plan.stall_limit_s(
            ended.usual_turnaround(), ended.turnaround(slo.turnaround_quantile), slo.lagging_factor
        )
        return sibling_plan.LaneLoad(self.lane.name, "healthy", limit, slowest, held=False)

    def as_sibling(self, now_ms: int) -> sibling_plan.Sibling:
        """This lane as a destination for a sibling's jobs, as the tracker judges one."""
        health = self.health(now_ms)
        return sibling_plan.sibling(
            self._load(now_ms, health),
            health.turnaround(self.settings.slo.turnaround_quantile),
            sync_lane(self.settings, self.provider, health).margin_s,
            self.scenario.tick_s,
        )

    def _move(self, deadlines: list[int], jobs: list[int], siblings: list[sibling_plan.Sibling],
              now_ms: int, batch: _Batch | None = None) -> None:  # fmt: skip
        """Move the jobs of ``deadlines``/``jobs`` (a queue, sorted) that a sibling fits."""
        targets = sibling_plan.destinations(deadlines, siblings, now_ms)
        if not any(targets):
            return
        runs = {s.lane.name: s for s in self.siblings}
        keep_d, keep_j = [], []
        for deadline, job, target in zip(deadlines, jobs, targets, strict=True):
            if target is None or job in self.adopted:
                keep_d.append(deadline)
                keep_j.append(job)
                continue
            runs[target].adopt(self.arrival[job], deadline)
            self.done[job] = MOVED
            self.outcome.relaned += 1
            if batch is not None:
                batch.flipped.append(job)  # billed twice if the batch ends after all
        deadlines[:], jobs[:] = keep_d, keep_j
        if batch is not None and not batch.jobs:
            batch.cancelled = True  # every job left: the tracker cancels it at the provider

    def _failover(self, now_ms: int, health: LaneHealth) -> None:
        """Move waiting jobs to healthy siblings before any flip, as the tracker does."""
        load = self._load(now_ms, health)
        if not sibling_plan.lags(load):
            return
        siblings = [s.as_sibling(now_ms) for s in self.siblings]
        if not any(s.healthy for s in siblings):
            return
        for batch in self.batches:
            elapsed = (now_ms - batch.submitted_ms) / 1000
            if batch.cancelled or batch.observed_ms is not None or not batch.jobs:
                continue
            if elapsed > load.stall_after_s:
                self._move(batch.deadlines, batch.jobs, siblings, now_ms, batch)
        self._move(self.q_deadlines, self.q_jobs, siblings, now_ms)

    def _flip_prefix(self, batch: _Batch | None, horizon: float, budget: list[int]) -> None:
        deadlines = self.q_deadlines if batch is None else batch.deadlines
        jobs = self.q_jobs if batch is None else batch.jobs
        count = min(count_below(deadlines, horizon), budget[0])
        if count <= 0:
            return
        for deadline, job in zip(deadlines[:count], jobs[:count], strict=True):
            self.sync.add(deadline, job)
            if batch is not None:
                batch.flipped.append(job)
                self.outcome.needless += not batch.expired and batch.end_ms <= deadline
        del deadlines[:count]
        del jobs[:count]
        budget[0] -= count
        self.outcome.flipped += count
        if batch is not None and not batch.jobs:
            batch.cancelled = True  # every job flipped: the tracker cancels it at the provider

    def _flips(self, now_ms: int, health: LaneHealth, budget: list[int]) -> None:
        live = [b for b in self.batches if not b.cancelled and b.jobs]
        if self.policy == "batch_only" or self.policy == "always_sync":
            return
        if self.policy == "fixed_escalation":
            horizon = now_ms + self.scenario.fixed_escalation_h * 3_600_000 + 1
            for batch in live:
                self._flip_prefix(batch, horizon, budget)
            self._flip_prefix(None, horizon, budget)
            return
        sync = sync_lane(self.settings, self.provider, health)
        policy = Policy.for_settings(self.settings)
        if self.policy == "oracle":
            late = [
                b.deadlines if b.expired else b.deadlines[: count_below(b.deadlines, b.end_ms)] for b in live
            ]
            at_risk = list(heapq.merge(self.sync.deadlines, *late))
            safe = safe_horizon_ms(at_risk, now_ms, sync, policy.tick_s)
            for batch, due in zip(live, late, strict=True):
                if due:
                    self._flip_prefix(batch, min(safe, due[-1] + 1), budget)
            self._flip_prefix(None, safe, budget)
            return
        sources = [Source(b.id, b.submitted_ms) for b in live]
        lists: list[list[int]] = [b.deadlines for b in live]
        if self.q_deadlines:
            oldest = min(self.arrival[j] for j in self.q_jobs)
            flush = next_flush_ms(self.settings, health, oldest, self.q_deadlines[0], now_ms)
            sources.append(Source(None, flush))
            lists.append(self.q_deadlines)
        decided = plan(health.model, sources, lists, self.sync.deadlines, sync, policy, now_ms)
        for batch in live:
            self._flip_prefix(batch, decided.horizons[batch.id], budget)
        if self.q_deadlines:
            self._flip_prefix(None, decided.horizons[None], budget)
        self._pull_polls(live, decided, now_ms)

    def _pull_polls(self, live: list[_Batch], decided: Plan, now_ms: int) -> None:
        """Bring a batch's next poll forward to just before its earliest job's flip, as the tracker does."""
        lead_ms = poll_lead_ms(self.scenario.tick_s)
        for batch in live:
            if not batch.jobs:
                continue
            polls = PollState(batch.submitted_ms, batch.next_poll_ms, batch.running_seen_ms, batch.pulled_ms)
            at = pulled_poll_ms(decided.first_flip_ms(batch.deadlines[0], batch.id), polls, now_ms, lead_ms)
            if at is not None:
                batch.next_poll_ms = batch.pulled_ms = at

    def _plan(self, now_ms: int, health: LaneHealth) -> None:
        if not self.q_deadlines:
            return
        turnaround = expected_turnaround_s(health, self.settings)
        tick_s = self.scenario.tick_s
        now = now_ms / 1000
        state = LaneBacklog(
            queued=len(self.q_jobs),
            queued_bytes=len(self.q_jobs) * self.spec.input_tokens * BYTES_PER_TOKEN,
            oldest_arrival_ms=min(self.arrival[j] for j in self.q_jobs),
            earliest_deadline_ms=self.q_deadlines[0],
            pressured=count_below(self.q_deadlines, pressure_horizon_ms(now, turnaround, tick_s) + 1),
        )
        decision = decide(self.lane, state, now, tick_s=tick_s, turnaround_s=turnaround)
        if not decision.flush:
            return
        # Earliest deadlines first, each batch filled to its cap or its deadline band (as
        # reserve_batch does); a batch closed by its band does not count against the decision.
        sched = self.settings.scheduler
        made = 0
        while made < decision.batches and self.q_jobs:
            limit = band_limit_ms(
                now_ms, self.q_deadlines[0], sched.batch_deadline_spread, sched.batch_deadline_band_min_s
            )
            fits = min(self.lane.max_batch_requests, len(self.q_jobs))
            count = min(fits, count_below(self.q_deadlines, limit + 1))
            self._submit(now_ms, count)
            made += count == fits

    def _finish(self, job: int, at_ms: int, route: RouteName) -> None:
        self.done[job] = at_ms
        out = self.outcome
        out.jobs += 1
        out.on_time += at_ms <= self.deadline[job]
        out.sync_equivalent_usd += self.prices.sync
        out.actual_usd += {"batch": self.prices.batch, "flex": self.prices.flex, "sync": self.prices.sync}[
            route
        ]
        out.by_sync += route != "batch"

    # -- the tick ----------------------------------------------------------------------------------

    def step(self, now_ms: int, budget: list[int]) -> None:
        self._arrive(now_ms)
        self._poll(now_ms)
        self._ingest(now_ms)
        if self.policy != "always_sync":
            health = self.health(now_ms)
            if self.siblings:
                self._failover(now_ms, health)
                health = self.health(now_ms)  # a batch every job left is cancelled
            self._flips(now_ms, health, budget)
            self._plan(now_ms, health)
            self._poll(now_ms, pulled=True)
        for job, done, route, latency in self.sync.serve(now_ms, now_ms + int(self.scenario.tick_s * 1000)):
            self.sync_latencies.append(latency)
            self._finish(job, done, route)

    def busy(self) -> bool:
        return bool(self.q_jobs or self.batches or self.sync.jobs) or self.next_arrival_ms < self.end_ms

    def close(self) -> None:
        """Jobs never finished count, late; duplicate spend is spend."""
        unfinished = sum(1 for d in self.done if d == -1)
        self.outcome.jobs += unfinished
        self.outcome.sync_equivalent_usd += unfinished * self.prices.sync
        self.outcome.actual_usd += self.outcome.duplicate_usd


def provider_name(index: int, spec: LaneScenario) -> str:
    """Each lane gets its own provider account (its own sync limits), priced as its kind."""
    return f"{spec.provider}-{index}"


def scenario_settings(base: Settings, scenario: Scenario) -> Settings:
    """``base`` (the deployment's settings: SLO knobs, lane defaults) with the scenario's providers and tick."""
    providers = {
        provider_name(i, lane): ProviderSettings(
            kind=lane.provider,
            base_url="http://simulated",
            sync_rpm=lane.sync_rpm,
            sync_concurrency=lane.sync_concurrency,
            flex=lane.flex,
        )
        for i, lane in enumerate(scenario.lanes)
    }
    return base.model_copy(
        update={
            "providers": providers,
            "lanes": {},
            "scheduler": base.scheduler.model_copy(update={"tick_interval_s": scenario.tick_s}),
        }
    )


def lane_prices(pricing: Pricing, index: int, spec: LaneScenario) -> _Prices:
    """What one job of the lane costs by each route (every job of a lane has the same usage)."""
    cached = int(spec.input_tokens * spec.cached_share)
    usage: dict[str, Any]
    if spec.provider == "openai":
        usage = {
            "prompt_tokens": spec.input_tokens,
            "completion_tokens": spec.output_tokens,
            "prompt_tokens_details": {"cached_tokens": cached},
        }
    else:
        usage = {
            "input_tokens": spec.input_tokens - cached,
            "output_tokens": spec.output_tokens,
            "cache_read_input_tokens": cached,
        }
    name = provider_name(index, spec)
    costs = {
        route: pricing.job_cost(name, spec.provider, spec.model, route, usage)
        for route in ("batch", "flex", "sync")
    }
    if any(c.actual_usd is None or c.sync_equivalent_usd is None for c in costs.values()):
        raise ScenarioError(
            f"lane {index}: model {spec.model!r} of {spec.provider} is not in the pricing table"
        )
    return _Prices(
        batch=costs["batch"].actual_usd or 0.0,
        flex=costs["flex"].actual_usd or 0.0,
        sync=costs["sync"].actual_usd or 0.0,
    )


def run_policy(
    scenario: Scenario, settings: Settings, pricing: Pricing, policy: PolicyName, *, siblings: bool = True
) -> Outcome:
    """One policy over the whole scenario (``batchshift`` with the scenario's sibling lanes unless
    ``siblings`` is off)."""
    sim_settings = scenario_settings(settings, scenario)
    lanes = [
        _LaneRun(i, spec, scenario, sim_settings, policy, lane_prices(pricing, i, spec))
        for i, spec in enumerate(scenario.lanes)
    ]
    if policy == "batchshift" and siblings:
        for lane, spec in zip(lanes, scenario.lanes, strict=True):
            lane.siblings = [lanes[i] for i in spec.siblings]
    tick_ms = int(scenario.tick_s * 1000)
    # One simulated tick stands for tick_s / tick_interval_s production ticks of flips.
    per_tick = int(
        settings.slo.max_flips_per_tick * max(1.0, scenario.tick_s / settings.scheduler.tick_interval_s)
    )
    stop_ms = EPOCH_MS + int(scenario.duration_h * 3_600_000) + DRAIN_LIMIT_MS
    now = EPOCH_MS
    while now <= stop_ms and any(lane.busy() for lane in lanes):
        budget = [per_tick]
        for lane in lanes:
            lane.step(now, budget)
        now += tick_ms
    total = Outcome()
    for lane in lanes:
        lane.close()
        o = lane.outcome
        total.jobs += o.jobs
        total.on_time += o.on_time
        total.actual_usd += o.actual_usd
        total.sync_equivalent_usd += o.sync_equivalent_usd
        total.duplicate_usd += o.duplicate_usd
        total.flipped += o.flipped
        total.by_sync += o.by_sync
        total.needless += o.needless
        total.relaned += o.relaned
    return total


def simulate(
    scenario: Scenario, settings: Settings, pricing: Pricing, policies: tuple[PolicyName, ...] = POLICIES
) -> dict[str, Outcome]:
    """Every policy over the scenario; with sibling lanes, batchshift without them too (right after it)."""
    out: dict[str, Outcome] = {}
    for name in policies:
        out[name] = run_policy(scenario, settings, pricing, name)
        if name == "batchshift" and scenario.has_siblings:
            out[NO_SIBLINGS] = run_policy(scenario, settings, pricing, name, siblings=False)
    return out
