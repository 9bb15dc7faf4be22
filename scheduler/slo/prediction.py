"""Predicted completion, every tick: when will a lane's queued jobs and its batches in flight be done?

A queued job waits for the lane's next flush, then a batch's turnaround at
``settings.slo.turnaround_quantile``. The next flush is the oldest job's ``max_wait``, or sooner
when the earliest deadline presses (the planner flushes a lane once its earliest deadline leaves
no more than the flush lead: turnaround plus sync margin plus two ticks). A batch in flight for
``e`` seconds is predicted from the survival model conditioned on having waited ``e``
(:meth:`LaneHealth.remaining_after`); the batches in flight are themselves censored samples of
that model. Which jobs flip is decided from these by :mod:`scheduler.slo.flip_plan`.

A blind lane (no ended batch, and no prior tighter than the provider's completion window) predicts
nothing: its jobs stay on the batch route until their latest safe flip time. Its batches meanwhile
teach it its turnaround; without that, a fresh deployment with deadlines inside the window would
send everything to sync and never learn otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from config.settings import ProviderSettings, Settings
from scheduler.ledger import keys
from scheduler.planning.planner import PRESSURE_TICKS
from scheduler.slo.flip_plan import SyncLane, sync_rate
from scheduler.slo.health import LaneHealth


@dataclass(frozen=True, slots=True)
class LiveBatch:
    """A batch not yet ingested, as the SLO tracker needs it."""

    id: str
    lane: str
    state: str
    submitted_ms: int | None  # None while only planned
    ended_ms: int | None = None  # set once it ended: its results are on their way into the ledger
    next_poll_ms: int | None = None  # its polls, for polling it before a job's latest safe flip time
    running_seen_ms: int | None = None
    pulled_poll_ms: int | None = None


@dataclass(frozen=True, slots=True)
class BatchPrediction:
    """A batch in flight and when it is predicted to end."""

    batch: LiveBatch
    elapsed_s: float
    predicted_end_ms: int


@dataclass(slots=True)
class LanePrediction:
    """A lane's predictions at ``now_ms``."""

    lane: str
    now_ms: int
    turnaround_s: float  # at the configured quantile
    sync_margin_s: float
    next_flush_ms: int | None  # None with nothing queued
    oldest_arrival_ms: int | None
    health: LaneHealth  # with the batches in flight counted as censored samples
    sync_rate_per_s: float = 1.0  # jobs per second the provider's sync lane serves at its limits
    flip_margin_s: float = 0.0  # the sync margin, plus flex's latency where the provider sells flex
    batches: list[BatchPrediction] = field(default_factory=list)
    blind: bool = False  # no ended batch and no prior tighter than the window: flip only when safe
    # The lane queue's earliest deadline as read this tick (None: empty, or not read): flipping
    # skips reading the queue's ranges that end at or below it, which are empty.
    earliest_deadline_ms: int | None = None

    @property
    def queued_completion_ms(self) -> int | None:
        """When a job queued now is predicted to complete (next flush + turnaround)."""
        if self.next_flush_ms is None:
            return None
        return self.next_flush_ms + int(self.turnaround_s * 1000)

    def oldest_completion_ms(self) -> int | None:
        """Predicted completion of the lane's oldest job: the oldest batch in flight, else the queue."""
        if self.batches:
            oldest = min(self.batches, key=lambda b: b.batch.submitted_ms or self.now_ms)
            return oldest.predicted_end_ms
        return self.queued_completion_ms


def expected_turnaround_s(health: LaneHealth, settings: Settings) -> float:
    """The turnaround the planner's deadline-pressure rule should plan with: quantile + sync margin.

    Planning with the sync margin included makes a lane flush before its jobs would flip. A blind
    lane plans with the sync margin alone: its flushes come from ``max_wait`` and caps, not from
    a window-long prior that would flush every tick.
    """
    if health.blind:
        return health.sync_margin()
    return health.turnaround(settings.slo.turnaround_quantile) + health.sync_margin()


def flush_lead_s(health: LaneHealth, settings: Settings) -> float:
    """Seconds before its earliest deadline a lane flushes under deadline pressure (as the planner does)."""
    return expected_turnaround_s(health, settings) + PRESSURE_TICKS * settings.scheduler.tick_interval_s


def sync_lane(settings: Settings, provider_name: str, health: LaneHealth) -> SyncLane:
    """The sync lane a flipped job of this lane joins: its flip margin and its rate at the provider's limits.

    Flex first where it fits: where the provider sells flex, a job flips while flex (batch price)
    still has time to answer, and a flex refusal still leaves the sync margin.
    """
    provider = settings.providers.get(provider_name)
    limits = provider or ProviderSettings(kind="openai", base_url="http://unconfigured")  # the defaults
    margin = health.sync_margin() + (limits.flex_latency_s if limits.flex else 0.0)
    return SyncLane(margin, sync_rate(limits.sync_rpm, limits.sync_concurrency, health.sync_latency(0.5)))


def next_flush_ms(
    settings: Settings,
    health: LaneHealth,
    oldest_arrival_ms: int | None,
    earliest_deadline_ms: int,
    now_ms: int,
) -> int:
    """When a non-empty lane next flushes: its oldest job's ``max_wait``, or sooner under deadline pressure."""
    max_wait = settings.lane_settings(health.lane).max_wait
    by_deadline = earliest_deadline_ms - int(flush_lead_s(health, settings) * 1000)
    if max_wait is None or oldest_arrival_ms is None:
        return max(now_ms, by_deadline)
    return max(now_ms, min(oldest_arrival_ms + int(max_wait * 1000), by_deadline))


def predict_batch(health: LaneHealth, batch: LiveBatch, now_ms: int, q: float) -> BatchPrediction:
    """When ``batch`` is predicted to end, given how long it has been in flight."""
    start = batch.submitted_ms if batch.submitted_ms is not None else now_ms
    if batch.ended_ms is not None:
        return BatchPrediction(batch, max(0.0, (batch.ended_ms - start) / 1000), batch.ended_ms)
    elapsed = max(0.0, (now_ms - start) / 1000)
    total = health.remaining_after(elapsed, q)
    return BatchPrediction(batch, elapsed, start + int(total * 1000))


# The batch record's fields a LiveBatch is read from, in its order.
_BATCH_FIELDS = (
    "lane",
    "state",
    "submitted_ms",
    "ended_ms",
    "next_poll_ms",
    "running_seen_ms",
    "pulled_poll_ms",
)


async def live_batches(redis: Redis) -> dict[str, list[LiveBatch]]:
    """Every batch not yet ingested, grouped by lane, in one round trip per read.

    Planned batches (``keys.BATCHES_PLANNED``) count too: a submission stuck retrying must not hold
    its jobs past their deadlines, so they are predicted (as if submitted now) and may flip.
    """
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zrange(keys.BATCHES_PLANNED, 0, -1)
        pipe.zrange(keys.BATCHES_LIVE, 0, -1)
        planned, submitted = await pipe.execute()
    ids = list(dict.fromkeys(i.decode() for i in [*planned, *submitted]))
    if not ids:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for batch_id in ids:
            pipe.hmget(keys.batch(batch_id), [*_BATCH_FIELDS])
        rows = await pipe.execute()
    out: dict[str, list[LiveBatch]] = {}
    for batch_id, (lane, state, *times) in zip(ids, rows, strict=True):
        if lane is None:
            continue  # gone
        submitted_ms, ended_ms, next_poll, running_seen, pulled = (int(t) if t else None for t in times)
        out.setdefault(lane.decode(), []).append(
            LiveBatch(
                batch_id,
                lane.decode(),
                (state or b"").decode(),
                submitted_ms,
                ended_ms,
                next_poll_ms=next_poll,
                running_seen_ms=running_seen,
                pulled_poll_ms=pulled,
            )
        )
    return out


async def predict_lane(
    redis: Redis,
    settings: Settings,
    health: LaneHealth,
    batches: list[LiveBatch],
    now_ms: int,
    provider_name: str | None = None,
) -> LanePrediction:
    """The lane's predictions: its next flush, its queued jobs' completion, each batch's end."""
    async with redis.pipeline(transaction=False) as pipe:
        queue_prediction_reads(pipe, health.lane)
        oldest, earliest = await pipe.execute()
    return prediction_from(settings, health, batches, now_ms, provider_name, oldest, earliest)


def queue_prediction_reads(pipe: Pipeline, lane: str) -> None:
    """Queue the lane's two reads a prediction needs on ``pipe``: its oldest arrival and its earliest
    deadline (replies to :func:`prediction_from`), so every lane is read in the same round trip."""
    pipe.zrange(keys.lane_arrivals(lane), 0, 0, withscores=True)
    pipe.zrange(keys.lane_queue(lane), 0, 0, withscores=True)


def prediction_from(
    settings: Settings,
    health: LaneHealth,
    batches: list[LiveBatch],
    now_ms: int,
    provider_name: str | None,
    oldest: Sequence[tuple[bytes, float]],
    earliest: Sequence[tuple[bytes, float]],
) -> LanePrediction:
    """The lane's predictions from its oldest arrival and earliest deadline as read (``ZRANGE 0 0``)."""
    lane = health.lane
    q = settings.slo.turnaround_quantile
    running = [b for b in batches if b.submitted_ms is not None and b.ended_ms is None]
    health = health.with_in_flight([max(0.0, (now_ms - (b.submitted_ms or now_ms)) / 1000) for b in running])
    sync = sync_lane(settings, provider_name or lane.partition(":")[0], health)
    prediction = LanePrediction(
        lane=lane,
        now_ms=now_ms,
        turnaround_s=health.turnaround(q),
        sync_margin_s=health.sync_margin(),
        next_flush_ms=None,
        oldest_arrival_ms=int(oldest[0][1]) if oldest else None,
        health=health,
        sync_rate_per_s=sync.rate_per_s,
        flip_margin_s=sync.margin_s,
    )
    if earliest:
        prediction.earliest_deadline_ms = int(earliest[0][1])
        prediction.next_flush_ms = next_flush_ms(
            settings, health, prediction.oldest_arrival_ms, prediction.earliest_deadline_ms, now_ms
        )
    prediction.batches = [predict_batch(health, b, now_ms, q) for b in batches]
    prediction.blind = health.blind
    return prediction
