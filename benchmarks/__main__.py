"""Runs every benchmark stage in one process, in order, and prints one table.

Add a stage by appending its module to ``STAGES``. A stage that fails to import fails the run:
a benchmark silently skipped is a regression nobody sees.
"""

from __future__ import annotations

import asyncio
import importlib
from typing import Any

from rich.console import Console
from rich.table import Table

from config.logging import configure_logging

# Every stage module, run in this order. Append yours.
STAGES: tuple[str, ...] = (
    "benchmarks.intake",
    "benchmarks.providers",
    "benchmarks.planning",
    "benchmarks.ingest",
    "benchmarks.webhooks",
    "benchmarks.pipeline",
    "benchmarks.soak",
)


def _number(value: Any, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


async def run_all() -> list[dict[str, Any]]:
    """Import and run every stage; rows carry their stage's short name."""
    rows: list[dict[str, Any]] = []
    for name in STAGES:
        module = importlib.import_module(name)
        for row in await module.run():
            rows.append({"stage": name.rsplit(".", 1)[-1], **row})
    return rows


def render(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="batchshift benchmarks")
    for column, justify in (
        ("stage", "left"),
        ("figure", "left"),
        ("throughput", "right"),
        ("baseline", "right"),
        ("ratio", "right"),
        ("peak memory", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        unit = row.get("unit", "")
        table.add_row(
            row["stage"],
            row["figure"],
            f"{_number(row['throughput'])} {unit}",
            f"{_number(row.get('baseline'))} {unit}" if row.get("baseline") is not None else "–",
            _number(row.get("ratio"), 2),
            f"{_number(row.get('peak_mb'), 1)} MB",
        )
    return table


def main() -> None:
    # The stages' own log lines (a batch planned, a batch ingested ...) would bury the table.
    configure_logging("WARNING")
    rows = asyncio.run(run_all())
    console = Console()
    if not console.is_terminal:  # a log file or CI: wide enough that figures are not wrapped
        console = Console(width=170)
    console.print(render(rows))
    if any(row.get("failed") for row in rows):  # a stage's own check (the soak's memory) failed
        raise SystemExit(1)


if __name__ == "__main__":
    main()
