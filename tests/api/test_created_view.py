"""The view intake answers for a job it just created is the view of the record it stored."""

from __future__ import annotations

import orjson
from redis.asyncio import Redis

from api.jobs import created_view
from scheduler.ledger import ids
from scheduler.ledger.jobs import NewJob
from scheduler.ledger.ledger import Ledger

NOW = 1_800_000_000_123


def job(**kw: object) -> NewJob:
    fields: dict[str, object] = {
        "id": ids.job_id(NOW),
        "tenant": "acme",
        "provider": "openai",
        "endpoint": "/v1/chat/completions",
        "model": "m",
        "body": b'{"model":"m"}',
        "deadline_ms": NOW + 3_600_000,
        "created_ms": NOW,
    }
    fields.update(kw)
    return NewJob(**fields)  # type: ignore[arg-type]


async def test_created_views_are_the_stored_records_views(redis: Redis):
    ledger = Ledger(redis)
    dedup = {"dedup_digest": "d", "dedup_window_ms": 60_000, "dedup_max_followers": 5, "dedup_cost": "split"}
    jobs = [
        job(tags={"feature": "f", "team": "x"}, callback_url="https://example.com/hook"),
        job(state="sync", deadline_ms=NOW + 60_000),
        job(created_ms=NOW - 123, deadline_ms=NOW + 1_000),
        job(**dedup),
        job(**dedup),  # a follower of the one above
    ]
    outcomes = await ledger.enqueue_many(jobs)
    assert outcomes[4].attached_to == jobs[3].id
    for j, outcome in zip(jobs, outcomes, strict=True):
        stored = await ledger.get_view(j.id)
        assert stored is not None
        assert created_view(j, outcome.attached_to) == stored.view()


async def test_a_job_created_on_a_whole_second_shows_the_same_times_as_its_record(redis: Redis):
    """A time on a whole second is written without a fraction, in the created view as in the stored one."""
    second = 1_800_000_000_000
    j = job(created_ms=second, deadline_ms=second + 3_600_000)
    [outcome] = await Ledger(redis).enqueue_many([j])
    stored = await Ledger(redis).get_view(j.id)
    assert stored is not None
    view = created_view(j, outcome.attached_to)
    assert view == stored.view()
    assert orjson.dumps(view) == orjson.dumps(stored.view())
    assert (view["created_at"], view["deadline"]) == ("2027-01-15T08:00:00Z", "2027-01-15T09:00:00Z")
