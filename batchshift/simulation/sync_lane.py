"""The simulated sync API of one lane: earliest deadline first, within its rate and concurrency limits.

Flipped jobs (and, for ``always_sync``, every job) wait here by deadline. Each tick starts as many
calls as ``sync_rpm`` (one start every 60/rpm seconds) and ``sync_concurrency`` (slots busy for a
call's latency, drawn log-normal from the lane's median and p99) allow. Flex first where the lane
sells it and the deadline leaves the provider's flex latency, as the sync task does; a share of flex
calls is refused and goes to standard sync at once.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random

from batchshift.simulation.scenario import LaneScenario
from scheduler.costs.pricing import RouteName


class SyncLane:
    """The lane's sync API: earliest deadline first, at ``sync_rpm`` and ``sync_concurrency``."""

    def __init__(self, spec: LaneScenario, rng: random.Random, flex_latency_s: float) -> None:
        self.spec = spec
        self.flex_latency_ms = flex_latency_s * 1000
        self.rng = rng
        self.deadlines: list[int] = []  # waiting to start, sorted
        self.jobs: list[int] = []
        self.slots: list[float] = []  # heap: when each busy slot frees
        self.next_start_ms = 0.0  # the rate limit's next free start

    def add(self, deadline_ms: int, job: int) -> None:
        at = bisect.bisect_right(self.deadlines, deadline_ms)
        self.deadlines.insert(at, deadline_ms)
        self.jobs.insert(at, job)

    def latency_s(self) -> float:
        lat = self.spec.sync_latency
        return math.exp(math.log(lat.median_s) + lat.sigma * self.rng.gauss(0.0, 1.0))

    def serve(self, now_ms: int, until_ms: int) -> list[tuple[int, int, RouteName, float]]:
        """Start what the limits allow in [now, until): (job, completion ms, route, latency s)."""
        spec = self.spec
        out: list[tuple[int, int, RouteName, float]] = []
        started = 0
        while started < len(self.jobs):
            start = max(float(now_ms), self.next_start_ms)
            while self.slots and self.slots[0] <= start:
                heapq.heappop(self.slots)
            if len(self.slots) >= spec.sync_concurrency:
                start = max(start, heapq.heappop(self.slots))
            if start >= until_ms:
                break
            deadline, job = self.deadlines[started], self.jobs[started]
            started += 1
            latency = self.latency_s()
            route: RouteName = "sync"
            if spec.flex and start + self.flex_latency_ms <= deadline:
                route = "sync" if self.rng.random() < spec.flex_unavailable_share else "flex"
            done = start + latency * 1000
            heapq.heappush(self.slots, done)
            if spec.sync_rpm is not None:
                self.next_start_ms = start + 60_000 / spec.sync_rpm
            out.append((job, int(done), route, latency))
        del self.deadlines[:started]
        del self.jobs[:started]
        return out
