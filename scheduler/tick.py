"""One scheduler tick as its steps see it: its inputs (:class:`Tick`), what it did (:class:`TickReport`)
and the shape of a tick step (:data:`Step`).

A step is a coroutine ``step(tick) -> None`` that records what it did on ``tick.report``. Each is
built once, with the narrow dependencies it needs (Redis, the arq pool, its settings, ...), by
:func:`scheduler.service.build_scheduler`; steps import this module, never the service that runs
them, so the tick's wiring has no cycle.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


class FlushDecision(Protocol):
    """What the plan step decided for a lane (:class:`scheduler.planning.planner.Decision`)."""

    @property
    def flush(self) -> bool: ...

    @property
    def reason(self) -> str: ...

    @property
    def batches(self) -> int: ...


@dataclass
class TickReport:
    """What one tick did."""

    now: float
    leader: bool = False
    token: int | None = None
    fenced: bool = False  # the fencing token was refused mid-tick: we are not the leader any more
    decisions: dict[str, FlushDecision] = field(default_factory=dict)  # lane -> flush decision
    planned: list[str] = field(default_factory=list)  # batch ids planned this tick
    reserved: int = 0  # jobs moved from lanes into planned batches
    submits: int = 0  # submit_batch tasks enqueued
    polls: int = 0  # poll_batch tasks enqueued
    reconcile: bool = False  # the reconcile_batches task was enqueued
    steps: dict[str, Any] = field(default_factory=dict)  # other steps' summaries, by step name
    errors: dict[str, str] = field(default_factory=dict)  # step name -> error, for steps that failed


@dataclass
class Tick:
    """One tick's inputs, handed to every step.

    ``token`` is the leader's fencing token for every write the tick makes; a step that runs long
    awaits ``keep_lease()`` between its pieces of work, which renews the lease once a third of its
    TTL has passed and raises :class:`scheduler.errors.Fenced` if it was lost.
    """

    now: float
    now_ms: int
    token: int
    report: TickReport
    keep_lease: Callable[[], Awaitable[None]]


Step = Callable[[Tick], Awaitable[None]]
