"""Cron windows: when a lane may submit, in the lane's own time zone (the only module using croniter).

A window opens at each match of a cron expression, evaluated in local time, and stays open for
``window_s`` seconds. Evaluating in the zone (not in UTC) is what keeps "09:00 every day" at
09:00 across daylight-saving changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

from croniter import CroniterBadCronError, croniter

from scheduler.errors import InvalidCron


def _zone(timezone: str) -> ZoneInfo:
    try:
        return ZoneInfo(timezone)
    except (KeyError, ValueError) as exc:
        raise InvalidCron(timezone, "unknown time zone") from exc


def validate(expression: str, timezone: str = "UTC") -> None:
    """Raise InvalidCron unless ``expression`` parses and ``timezone`` exists."""
    _zone(timezone)
    if not croniter.is_valid(expression):
        raise InvalidCron(expression, "not a valid cron expression")


def last_open(expression: str, timezone: str, now: float) -> float:
    """Epoch seconds of the latest match at or before ``now``."""
    zone = _zone(timezone)
    # croniter's get_prev is exclusive of its start; start a second later so a match at `now` counts.
    start = datetime.fromtimestamp(now + 1, tz=zone)
    try:
        prev: datetime = croniter(expression, start).get_prev(datetime)
    except CroniterBadCronError as exc:
        raise InvalidCron(expression, str(exc)) from exc
    return prev.timestamp()


def next_open(expressions: Sequence[str], timezone: str, now: float) -> float | None:
    """Epoch seconds of the next window opening after ``now``, or None without expressions."""
    zone = _zone(timezone)
    start = datetime.fromtimestamp(now, tz=zone)
    times = []
    for expression in expressions:
        try:
            times.append(croniter(expression, start).get_next(datetime).timestamp())
        except CroniterBadCronError as exc:
            raise InvalidCron(expression, str(exc)) from exc
    return min(times) if times else None


def window_open(expressions: Sequence[str], timezone: str, window_s: float, now: float) -> bool:
    """True when ``now`` falls in a window: within ``window_s`` after some expression's latest match."""
    return any(now < last_open(e, timezone, now) + window_s for e in expressions)
