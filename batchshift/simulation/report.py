"""The policy lab's outputs: a table on the terminal, a PNG of savings against on-time, the JSON.

matplotlib is imported only when a plot is asked for (it is slow to import), with the Agg backend:
the lab runs on servers without a display.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from batchshift.simulation.outcome import Outcome


def table(outcomes: dict[str, Outcome], title: str) -> Table:
    """One row per policy; "needless" counts flipped jobs whose batch would have made their deadline,
    "to sibling" jobs moved to a sibling lane."""
    out = Table(title=title)
    siblings = _with_siblings(outcomes)
    for name in ("policy", "jobs", "on time", "saved", "actual $", "sync-eq. $", "dup. $", "flipped",
                 "needless", *(["to sibling"] if siblings else []), "sync share"):  # fmt: skip
        out.add_column(name, justify="left" if name == "policy" else "right", no_wrap=True)
    for name, outcome in outcomes.items():
        p = outcome.as_dict()
        out.add_row(
            name,
            f"{p['jobs']:,}",
            f"{p['on_time_ratio']:.4%}",
            f"{p['saved_ratio']:.2%}",
            f"{p['actual_usd']:,.2f}",
            f"{p['sync_equivalent_usd']:,.2f}",
            f"{p['duplicate_usd']:,.2f}",
            f"{p['flipped']:,}",
            f"{outcome.needless:,}",
            *([f"{outcome.relaned:,}"] if siblings else []),
            f"{p['sync_share']:.2%}",
        )
    return out


def _with_siblings(outcomes: dict[str, Outcome]) -> bool:
    """Whether the run had sibling lanes (the table then has their column, and is wider)."""
    return any(o.relaned for o in outcomes.values())


def print_table(outcomes: dict[str, Outcome], title: str, console: Console | None = None) -> None:
    width = 150 if _with_siblings(outcomes) else 120
    (console or Console(width=max(Console().width, width))).print(table(outcomes, title))


def plot(outcomes: dict[str, Outcome], title: str, path: Path) -> None:
    """Savings against on-time ratio, one labelled point per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    markers = "osD^vP"
    for i, (name, outcome) in enumerate(outcomes.items()):
        p = outcome.as_dict()
        # Policies often land on the same spot (healthy lanes): a legend, and labels offset apart.
        x, y = p["on_time_ratio"] * 100, p["saved_ratio"] * 100
        ax.scatter(
            x, y, s=70, marker=markers[i % len(markers)], label=f"{name}: {y:.2f}% saved, {x:.3f}% on time"
        )
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 6 - 11 * i), fontsize=8)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_xlabel("on time (%)")
    ax.set_ylabel("saved vs all-sync (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")  # a PNG whatever the name ends with
    plt.close(fig)
