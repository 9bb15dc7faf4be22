"""Cron windows in the lane's time zone, including both daylight-saving changes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from scheduler.planning import cron


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("expression", "zone", "now", "is_open"),
    [
        # 09:00 New York is 14:00 UTC in winter (EST) ...
        ("0 9 * * *", "America/New_York", "2026-03-06T14:10:00", True),
        ("0 9 * * *", "America/New_York", "2026-03-06T13:10:00", False),
        # ... and 13:00 UTC once the clocks go forward on 2026-03-08 (EDT).
        ("0 9 * * *", "America/New_York", "2026-03-09T13:10:00", True),
        ("0 9 * * *", "America/New_York", "2026-03-09T14:40:00", False),
        # Back to 14:00 UTC after the clocks go back on 2026-11-01.
        ("0 9 * * *", "America/New_York", "2026-10-30T13:10:00", True),
        ("0 9 * * *", "America/New_York", "2026-11-02T13:10:00", False),
        ("0 9 * * *", "America/New_York", "2026-11-02T14:10:00", True),
        # The same expression in UTC ignores all of that.
        ("0 9 * * *", "UTC", "2026-03-09T09:10:00", True),
        ("0 9 * * *", "UTC", "2026-03-09T13:10:00", False),
        # A window exactly at its opening minute is open; at its end it is closed.
        ("0 9 * * *", "UTC", "2026-03-09T09:00:00", True),
        ("0 9 * * *", "UTC", "2026-03-09T09:30:00", False),
    ],
)
def test_window_open(expression: str, zone: str, now: str, is_open: bool) -> None:
    assert cron.window_open([expression], zone, 1800, utc(now)) is is_open


def test_spring_forward_skipped_time_opens_at_the_next_valid_time() -> None:
    """02:30 does not exist in New York on 2026-03-08; the window opens when 03:00 EDT comes."""
    opened = cron.last_open("30 2 * * *", "America/New_York", utc("2026-03-08T08:00:00"))
    assert opened == utc("2026-03-08T07:00:00")


def test_next_open_is_the_earliest_expression() -> None:
    now = utc("2026-03-09T08:00:00")
    assert cron.next_open(["0 22 * * *", "0 9 * * *"], "UTC", now) == utc("2026-03-09T09:00:00")
    assert cron.next_open([], "UTC", now) is None


@pytest.mark.parametrize(("expression", "zone"), [("not cron", "UTC"), ("0 9 * * *", "Mars/Olympus")])
def test_invalid_cron_names_the_problem(expression: str, zone: str) -> None:
    with pytest.raises(cron.InvalidCron, match="cron"):
        cron.validate(expression, zone)


def test_invalid_cron_pickles() -> None:
    import pickle

    exc = cron.InvalidCron("x", "bad")
    assert str(pickle.loads(pickle.dumps(exc))) == str(exc)  # noqa: S301 - our own bytes
