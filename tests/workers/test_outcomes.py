"""Typed task outcomes travel as arq results: msgpack keeps a member as its string value."""

from __future__ import annotations

from enum import StrEnum

import pytest

from scheduler.ledger import tasks
from workers.tasks.outcomes import CancelOutcome, PollOutcome, SubmitOutcome, SyncOutcome

MEMBERS = [m for kind in (SubmitOutcome, PollOutcome, CancelOutcome, SyncOutcome) for m in kind]


@pytest.mark.parametrize("member", MEMBERS, ids=lambda m: f"{type(m).__name__}.{m.name}")
def test_every_outcome_round_trips_through_the_task_serializer(member: StrEnum) -> None:
    stored = tasks.deserialize(tasks.serialize({"r": member}))["r"]
    assert type(stored) is str
    assert type(member)(stored) is member
