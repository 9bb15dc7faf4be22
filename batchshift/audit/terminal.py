"""The audit on the terminal: one row per feature with its verdict and deadline figures, then the reasons."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from batchshift.audit.report import Audit

VERDICT = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "[yellow]?[/yellow]"}


def _usd(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def _tokens(count: int) -> str:
    """Token counts in the few characters a table column has: 40.0M, 812.4k, 950."""
    if count >= 1_000_000:
        return f"{count / 1_000_000:,.1f}M"
    return f"{count / 1000:.1f}k" if count >= 10_000 else f"{count:,}"


def table(audit: Audit) -> Table:
    """Features, most expensive first, and the total of moving the eligible ones."""
    out = Table(
        title="batch eligibility audit",
        caption="eligible total: share of calls; 1 h, 4 h, 24 h: simulated at that deadline (on time, $ saved)",
        show_footer=True,
    )
    total = audit.total()
    footer = {
        "feature": "total (eligible moved)",
        "calls": f"{total['calls']:,}",
        "list $": _usd(total["list_usd"]),
        "batch $": _usd(total["batch_usd"]),
        "saved $": _usd(total["saved_usd"]),
        "eligible": f"{total['eligible_share']:.0%}",
    }
    columns = ["feature", "calls", "in tok", "out tok", "list $", "batch $", "flex $", "saved $", "eligible",
               "1 h", "4 h", "24 h"]  # fmt: skip
    for name in columns:
        left = name == "feature"
        out.add_column(name, footer=footer.get(name, ""), justify="left" if left else "right", no_wrap=True)
    for feature in audit.features:
        cost = feature.cost.total
        cells = [
            escape(feature.name),
            f"{cost.calls:,}",
            _tokens(cost.input_tokens),
            _tokens(cost.output_tokens),
            _usd(cost.list_usd),
            _usd(cost.batch_usd),
            _usd(cost.flex_usd),
            _usd(cost.saved_usd),
            VERDICT[feature.signals.eligible],
        ]
        for key in ("1h", "4h", "24h"):
            outcome = feature.deadlines.get(key) if feature.deadlines else None
            cells.append(
                "-" if outcome is None else f"{outcome.on_time_ratio:.1%}  ${outcome.saved_usd:,.2f}"
            )
        out.add_row(*cells)
    return out


def print_report(audit: Audit, console: Console | None = None) -> None:
    """The table, then each feature's reasons and its largest models and callers."""
    console = console or Console(width=max(Console().width, 170))
    inputs = ", ".join(f"{i.name} ({i.format}, {i.calls:,} calls)" for i in audit.inputs)
    console.print(f"read: {inputs}", markup=False, highlight=False)
    console.print(table(audit))
    for feature in audit.features:
        console.print(f"[bold]{escape(feature.name)}[/bold]  eligible: {VERDICT[feature.signals.eligible]}")
        for reason in feature.reasons:
            console.print(f"  - {reason}", markup=False, highlight=False)
        models = sorted(feature.cost.by_model.items(), key=lambda kv: -kv[1].list_usd)[:3]
        console.print(
            "  models: " + ", ".join(f"{p}/{m} {c.calls:,} calls ${c.list_usd:,.2f}" for (p, m), c in models),
            markup=False,
            highlight=False,
        )
        callers = sorted(feature.cost.by_caller.items(), key=lambda kv: -kv[1].list_usd)[:3]
        console.print(
            "  callers: " + ", ".join(f"{name} {c.calls:,} calls ${c.list_usd:,.2f}" for name, c in callers),
            markup=False,
            highlight=False,
        )
