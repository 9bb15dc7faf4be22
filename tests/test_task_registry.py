"""Contract: every task name the scheduler may enqueue is registered on the worker, and nothing else is."""

from __future__ import annotations

import pytest

from scheduler.ledger import tasks
from workers.worker import FUNCTIONS, worker_settings


def test_every_task_name_is_registered(settings) -> None:
    registered = {f.name for f in worker_settings(settings)["functions"]}
    assert set(tasks.ALL) <= registered
    assert len(registered) == len(FUNCTIONS), "a name is registered twice"


def test_registered_names_are_known_task_names() -> None:
    assert {f.name for f in FUNCTIONS} <= set(tasks.ALL)


async def test_enqueue_refuses_unknown_names(redis) -> None:
    with pytest.raises(ValueError, match="unknown task name"):
        await tasks.enqueue(redis, "submit_btach", "x", job_id="x")
