"""What one policy's run came to: the figures of the JSON contract (which the table shows too)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Outcome:
    """One policy's figures over the whole run (the JSON contract's fields)."""

    jobs: int = 0
    on_time: int = 0
    actual_usd: float = 0.0
    sync_equivalent_usd: float = 0.0
    duplicate_usd: float = 0.0
    flipped: int = 0
    by_sync: int = 0  # served by sync or flex
    needless: int = 0  # flipped although its batch would have made the deadline
    relaned: int = 0  # moved to a sibling lane before any flip ("to sibling")

    def as_dict(self) -> dict[str, Any]:
        return {
            "jobs": self.jobs,
            "on_time_ratio": round(self.on_time / self.jobs, 6) if self.jobs else 1.0,
            "actual_usd": round(self.actual_usd, 6),
            "sync_equivalent_usd": round(self.sync_equivalent_usd, 6),
            "saved_ratio": round(1 - self.actual_usd / self.sync_equivalent_usd, 6)
            if self.sync_equivalent_usd
            else 0.0,
            "duplicate_usd": round(self.duplicate_usd, 6),
            "flipped": self.flipped,
            "needless": self.needless,
            "relaned": self.relaned,
            "sync_share": round(self.by_sync / self.jobs, 6) if self.jobs else 0.0,
        }


def as_json(outcomes: dict[str, Outcome]) -> dict[str, Any]:
    """The contract: ``{"policies": {name: figures}}``."""
    return {"policies": {name: o.as_dict() for name, o in outcomes.items()}}
