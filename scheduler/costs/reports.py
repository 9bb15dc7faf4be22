"""Cost reports: what jobs cost, what batching saved, grouped by tenant, feature, lane, model, route or day.

Reports read only the per-day, per-tenant aggregates that ``finish.lua`` keeps as jobs end (see
scheduler/ledger/keys.py), so a report costs O(days × tenants × groups) Redis reads in three pipelined
round trips, never O(jobs). Days are UTC; an RFC 3339 ``from``/``to`` is taken by its UTC day,
because the aggregates are daily.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final, Literal

from redis.asyncio import Redis

from scheduler.errors import InvalidRequest
from scheduler.ledger import keys

GroupBy = Literal["tenant", "feature", "lane", "model", "route", "day"]
GROUP_BYS: Final = ("tenant", "feature", "lane", "model", "route", "day")
DEFAULT_DAYS = 30
MAX_DAYS = keys.AGG_TTL_S // 86400  # nothing older is kept
USD_DIGITS = 9

# Fields finish.lua keeps per group; all are summed across days and tenants.
FIELDS: Final = (
    "jobs",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "actual_usd",
    "sync_equivalent_usd",
    "saved_usd",
    "sync_jobs",
    "flex_jobs",
    "duplicate_usd",
    "wasted_usd",
    "on_time",
    "late",
    "deduplicated_jobs",
    "deduplicated_saved_usd",
)


@dataclass(frozen=True, slots=True)
class Period:
    """An inclusive range of UTC days."""

    start: date
    end: date

    def days(self) -> list[str]:
        count = (self.end - self.start).days + 1
        return [(self.start + timedelta(days=i)).isoformat() for i in range(count)]


def parse_day(value: str, name: str) -> date:
    """A ``YYYY-MM-DD`` date or an RFC 3339 timestamp, as its UTC day; InvalidRequest otherwise."""
    try:
        if len(value) == 10:
            return date.fromisoformat(value)
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise InvalidRequest("expected YYYY-MM-DD or an RFC 3339 timestamp", name) from exc
    if moment.tzinfo is None:
        raise InvalidRequest("an RFC 3339 timestamp needs a time zone offset (e.g. Z)", name)
    try:
        return moment.astimezone(UTC).date()
    except OverflowError as exc:  # 9999-12-31T23:00-05:00 is past the last date in UTC
        raise InvalidRequest("the time's UTC day is outside the calendar", name) from exc


def period(start: str | None, end: str | None, now: datetime) -> Period:
    """The report's days: ``from``..``to`` inclusive, by default the last 30 days up to today (UTC)."""
    last = parse_day(end, "to") if end else now.astimezone(UTC).date()
    try:
        first = parse_day(start, "from") if start else last - timedelta(days=DEFAULT_DAYS - 1)
    except OverflowError as exc:  # to=0001-01-01: the default 30 days before it do not exist
        raise InvalidRequest(
            f"give a from date: the {DEFAULT_DAYS} days before to are not dates", "from"
        ) from exc
    if first > last:
        raise InvalidRequest("from is after to", "from")
    if (last - first).days + 1 > MAX_DAYS:
        raise InvalidRequest(f"at most {MAX_DAYS} days per report (older figures are not kept)", "from")
    return Period(first, last)


def _number(raw: bytes | None) -> float:
    return float(raw) if raw else 0.0


def summarise(key: str | None, sums: dict[str, float]) -> dict[str, Any]:
    """One report row from summed fields, with the derived shares.

    ``saved_pct`` and ``on_time_pct`` are percentages (0-100) of the sync-equivalent cost and of the
    finished jobs; ``sync_share`` is the ratio (0-1) of jobs that went to paid sync, ``cache_share``
    the ratio (0-1) of input tokens read from the provider's prompt cache.
    """
    inputs = sums.get("input_tokens", 0.0)
    jobs = int(sums.get("jobs", 0))
    sync_eq = sums.get("sync_equivalent_usd", 0.0)
    saved = sums.get("saved_usd", 0.0)
    judged = sums.get("on_time", 0.0) + sums.get("late", 0.0)
    row: dict[str, Any] = {"key": key} if key is not None else {}
    row.update(
        {
            "jobs": jobs,
            "input_tokens": int(sums.get("input_tokens", 0)),
            "output_tokens": int(sums.get("output_tokens", 0)),
            "cached_input_tokens": int(sums.get("cached_input_tokens", 0)),
            "cache_share": round(sums.get("cached_input_tokens", 0) / inputs, 4) if inputs else None,
            "actual_usd": round(sums.get("actual_usd", 0.0), USD_DIGITS),
            "sync_equivalent_usd": round(sync_eq, USD_DIGITS),
            "saved_usd": round(saved, USD_DIGITS),
            "saved_pct": round(100 * saved / sync_eq, 2) if sync_eq > 0 else None,
            "sync_share": round(sums.get("sync_jobs", 0) / jobs, 4) if jobs else None,
            "duplicate_usd": round(sums.get("duplicate_usd", 0.0), USD_DIGITS),
            "wasted_usd": round(sums.get("wasted_usd", 0.0), USD_DIGITS),
            "on_time_pct": round(100 * sums.get("on_time", 0) / judged, 2) if judged else None,
            # Deduplication: jobs answered by an identical job's provider call, and what that saved
            # (already part of saved_usd).
            "deduplicated_jobs": int(sums.get("deduplicated_jobs", 0)),
            "deduplicated_saved_usd": round(sums.get("deduplicated_saved_usd", 0.0), USD_DIGITS),
        }
    )
    return row


async def report(
    redis: Redis,
    group_by: GroupBy,
    days: Period,
    tenants: Sequence[str] | None = None,
) -> dict[str, Any]:
    """``{"groups": [...], "total": {...}}`` over ``days``; ``tenants`` limits it (None: all tenants)."""
    if group_by not in GROUP_BYS:
        raise InvalidRequest(f"group_by must be one of {', '.join(GROUP_BYS)}", "group_by")
    day_list = days.days()
    if tenants is None:
        async with redis.pipeline(transaction=False) as pipe:
            for day in day_list:
                pipe.smembers(keys.agg_tenants(day))
            found: list[set[bytes]] = await pipe.execute()
        pairs = [(day, t.decode()) for day, members in zip(day_list, found, strict=True) for t in members]
    else:
        pairs = [(day, t) for day in day_list for t in tenants]

    # (group key, hash key) for every group hash to read.
    reads: list[tuple[str, str]] = []
    if group_by in ("tenant", "day"):
        for day, tenant in pairs:
            reads.append((tenant if group_by == "tenant" else day, keys.agg_total(day, tenant)))
    else:
        async with redis.pipeline(transaction=False) as pipe:
            for day, tenant in pairs:
                pipe.smembers(keys.agg_values(day, tenant, group_by))
            values: list[set[bytes]] = await pipe.execute()
        for (day, tenant), members in zip(pairs, values, strict=True):
            for value in sorted(members):
                name = value.decode()
                reads.append((name, keys.agg_group(day, tenant, group_by, name)))

    async with redis.pipeline(transaction=False) as pipe:
        for _, hash_key in reads:
            pipe.hmget(hash_key, list(FIELDS))
        rows: list[list[bytes | None]] = await pipe.execute()

    groups: dict[str, dict[str, float]] = {}
    total: dict[str, float] = dict.fromkeys(FIELDS, 0.0)
    for (group, _), raw in zip(reads, rows, strict=True):
        if not any(raw):
            continue
        sums = groups.setdefault(group, dict.fromkeys(FIELDS, 0.0))
        for name, cell in zip(FIELDS, raw, strict=True):
            amount = _number(cell)
            sums[name] += amount
            total[name] += amount  # every job is in exactly one group of each dimension
    ordered = sorted(groups.items(), key=_order(group_by))
    return {
        "group_by": group_by,
        "from": days.start.isoformat(),
        "to": days.end.isoformat(),
        "groups": [summarise(key, sums) for key, sums in ordered],
        "total": summarise(None, total),
    }


def _order(group_by: str) -> Any:
    """Days in calendar order; every other grouping by spend, largest first."""
    if group_by == "day":
        return lambda item: item[0]
    return lambda item: (-item[1]["actual_usd"], item[0])
