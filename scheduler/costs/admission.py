"""What intake's admission checks read (:class:`AdmissionGate`) and their shape (:data:`AdmissionCheck`).

Admission checks run on a validated NewJob before it is stored: they may refuse it (raise a
BatchshiftError, e.g. a spent budget) or change its route (state ``sync``). The checks live with
what they own (scheduler/slo/flips.py, scheduler/costs/budgets.py) and intake runs them in order, so this
small module sits below all three and none of them imports another for the type.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from redis.asyncio import Redis

from config.settings import Settings
from scheduler.ledger.jobs import NewJob


@dataclass(frozen=True, slots=True)
class AdmissionGate:
    """What an admission check may read: the settings and the process's Redis client."""

    settings: Settings
    redis: Redis


AdmissionCheck = Callable[[NewJob, AdmissionGate], Awaitable[None]]
