"""The savings chart's geometry: daily series in, SVG coordinates out (a pure function).

The template draws what this returns as inline SVG: one polyline per series with a dot per day
(each dot titled with its day and value), a y axis of dollar ticks and the first and last day on
the x axis. No charting library and no script: the chart renders wherever the page does.
"""

from __future__ import annotations

from dataclasses import dataclass

WIDTH, HEIGHT = 720, 280
LEFT, RIGHT, TOP, BOTTOM = 72, 16, 16, 36
TICKS = 4

# (field of a cost report row, legend label, CSS class that colours it).
SERIES = (
    ("sync_equivalent_usd", "Sync-equivalent cost", "series-sync"),
    ("actual_usd", "Actual cost", "series-actual"),
    ("duplicate_usd", "Duplicate spend", "series-duplicate"),
)


@dataclass(frozen=True, slots=True)
class Point:
    x: float
    y: float
    day: str
    value: float


@dataclass(frozen=True, slots=True)
class Line:
    field: str
    label: str
    css: str
    points: list[Point]

    @property
    def polyline(self) -> str:
        return " ".join(f"{p.x:.1f},{p.y:.1f}" for p in self.points)


@dataclass(frozen=True, slots=True)
class Chart:
    width: int
    height: int
    lines: list[Line]
    y_ticks: list[tuple[float, str]]  # (y, label)
    x_labels: list[tuple[float, str]]  # (x, day)
    baseline: float
    left: int
    right: float


def money(value: float) -> str:
    """Dollars as a tick or cell shows them: cents from a dollar up, six decimals below (a batch
    of small jobs costs fractions of a cent)."""
    if value == 0 or abs(value) >= 1:
        return f"${value:,.2f}"
    digits = f"{value:.6f}".rstrip("0")
    return f"${digits}" if len(digits.split(".")[1]) >= 2 else f"${value:.2f}"


def savings_chart(days: list[str], rows: dict[str, dict[str, float]]) -> Chart:
    """The chart of ``rows`` (day -> cost report row); a day without a row counts as zero."""
    top = max((float(rows.get(d, {}).get(f, 0.0)) for d in days for f, _, _ in SERIES), default=0.0)
    top = top if top > 0 else 1.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / (len(days) - 1) if len(days) > 1 else 0.0

    def x(i: int) -> float:
        return LEFT + (i * step if len(days) > 1 else plot_w / 2)

    def y(value: float) -> float:
        return TOP + plot_h * (1 - value / top)

    lines = [
        Line(
            field,
            label,
            css,
            [
                Point(x(i), y(v), day, v)
                for i, day in enumerate(days)
                for v in [float(rows.get(day, {}).get(field, 0.0))]
            ],
        )
        for field, label, css in SERIES
    ]
    ticks = [(y(top * k / TICKS), money(top * k / TICKS)) for k in range(TICKS + 1)]
    x_labels = [(x(0), days[0])] if days else []
    if len(days) > 1:
        x_labels.append((x(len(days) - 1), days[-1]))
    return Chart(WIDTH, HEIGHT, lines, ticks, x_labels, TOP + plot_h, LEFT, WIDTH - RIGHT)
