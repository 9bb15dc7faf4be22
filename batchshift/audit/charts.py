"""The HTML report's charts as inline SVG strings: no script, no library, nothing fetched.

Each chart is a pure function of the audit's figures returning one ``<svg>`` element with a
``<title>`` and an ``aria-label``, so screen readers announce what it shows.
"""

from __future__ import annotations

from html import escape

from batchshift.audit.report import FeatureAudit

LIST_COLOUR = "#6b7280"
BATCH_COLOUR = "#1d4ed8"
INELIGIBLE_COLOUR = "#b45309"
DEADLINE_COLOURS = {"1h": "#7c3aed", "4h": "#0f766e", "24h": "#1d4ed8"}
LABEL_W = 190  # room for a feature name on the left
BAR_W = 420
ROW_H = 34


def _text(
    x: float, y: float, body: str, *, anchor: str = "start", size: int = 12, weight: str = "normal"
) -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" font-weight="{weight}">'
        f"{escape(body)}</text>"
    )


def _svg(width: int, height: int, title: str, body: list[str]) -> str:
    label = escape(title, quote=True)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{label}" font-family="system-ui, sans-serif">'
        f"<title>{escape(title)}</title>{''.join(body)}</svg>"
    )


def _short(name: str, limit: int = 28) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def cost_bars(features: list[FeatureAudit]) -> str:
    """Per feature, its list cost against its batch cost (orange: not eligible or unknown)."""
    top = max((f.cost.total.list_usd for f in features), default=0.0) or 1.0
    body = [
        f'<rect x="{LABEL_W}" y="6" width="12" height="12" fill="{LIST_COLOUR}"/>',
        _text(LABEL_W + 18, 16, "list (sync) $"),
        f'<rect x="{LABEL_W + 120}" y="6" width="12" height="12" fill="{BATCH_COLOUR}"/>',
        _text(LABEL_W + 138, 16, "batch $ (eligible)"),
        f'<rect x="{LABEL_W + 270}" y="6" width="12" height="12" fill="{INELIGIBLE_COLOUR}"/>',
        _text(LABEL_W + 288, 16, "batch $ (not eligible or unknown)"),
    ]
    for i, feature in enumerate(features):
        y = 30 + i * ROW_H
        cost = feature.cost.total
        listed = BAR_W * cost.list_usd / top
        batch = BAR_W * cost.batch_usd / top
        colour = BATCH_COLOUR if feature.signals.eligible else INELIGIBLE_COLOUR
        body += [
            _text(LABEL_W - 8, y + 17, _short(feature.name), anchor="end"),
            f'<rect x="{LABEL_W}" y="{y + 2}" width="{listed:.1f}" height="13" fill="{LIST_COLOUR}"/>',
            f'<rect x="{LABEL_W}" y="{y + 16}" width="{batch:.1f}" height="13" fill="{colour}"/>',
            _text(LABEL_W + listed + 6, y + 13, f"${cost.list_usd:,.2f}", size=11),
            _text(LABEL_W + batch + 6, y + 27, f"${cost.batch_usd:,.2f}", size=11),
        ]
    height = 36 + len(features) * ROW_H
    return _svg(LABEL_W + BAR_W + 110, height, "List cost against batch cost per feature", body)


def deadline_bars(features: list[FeatureAudit]) -> str:
    """Per simulated feature, the share saved at each deadline, with the share of jobs on time."""
    simulated = [f for f in features if f.deadlines]
    body: list[str] = []
    x0 = LABEL_W
    for j, (key, colour) in enumerate(DEADLINE_COLOURS.items()):
        body += [
            f'<rect x="{x0 + j * 110}" y="6" width="12" height="12" fill="{colour}"/>',
            _text(x0 + j * 110 + 18, 16, f"deadline {key[:-1]} h"),
        ]
    row_h = 3 * 15 + 12
    for i, feature in enumerate(simulated):
        y = 30 + i * row_h
        body.append(_text(LABEL_W - 8, y + 26, _short(feature.name), anchor="end"))
        for j, (key, colour) in enumerate(DEADLINE_COLOURS.items()):
            outcome = (feature.deadlines or {})[key]
            width = BAR_W * max(outcome.saved_ratio, 0.0)  # 100 % of the axis: everything saved
            yy = y + j * 15
            body += [
                f'<rect x="{LABEL_W}" y="{yy}" width="{width:.1f}" height="12" fill="{colour}"/>',
                _text(
                    LABEL_W + width + 6,
                    yy + 10,
                    f"{outcome.saved_ratio:.1%} saved (${outcome.saved_usd:,.2f}), {outcome.on_time_ratio:.2%} on time",
                    size=11,
                ),
            ]
    height = 36 + max(len(simulated), 1) * row_h
    if not simulated:
        body.append(_text(LABEL_W, 44, "no feature could be simulated"))
    return _svg(
        LABEL_W + BAR_W + 260, height, "Share saved and on time at deadlines of 1, 4 and 24 hours", body
    )


def hourly_profile(feature: FeatureAudit, profile: list[float]) -> str:
    """A feature's calls per UTC hour of the day: scheduled bursts show as spikes, people as a curve."""
    width, height, bar = 24 * 9, 44, 7
    top = max(profile) or 1.0
    body = []
    for hour, count in enumerate(profile):
        h = (height - 12) * count / top
        body.append(
            f'<rect x="{hour * 9}" y="{height - 12 - h:.1f}" width="{bar}" height="{h:.1f}" fill="{BATCH_COLOUR}">'
            f"<title>{hour:02d}:00 UTC: {count:,.1f} calls</title></rect>"
        )
    body += [_text(0, height - 1, "00", size=9), _text(width, height - 1, "23 UTC", anchor="end", size=9)]
    return _svg(width, height, f"Calls per hour of day of {feature.name}", body)
