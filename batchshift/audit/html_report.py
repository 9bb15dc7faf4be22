"""The audit as one self-contained HTML file: inline CSS and SVG charts, no script, nothing fetched.

Every value from a log (feature, caller and model names, reasons) is HTML-escaped: logs are not
trusted input. An empty data-URL icon stops the browser asking for a favicon.
"""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape

from batchshift.audit import charts, deadlines
from batchshift.audit.costing import Cost
from batchshift.audit.report import Audit, FeatureAudit

STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1200px;padding:0 1rem;color:#111827;
background:#fff;line-height:1.4}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem}h3{font-size:1.05rem;margin:0}
.cards{display:flex;gap:1rem;flex-wrap:wrap}
.card{border:1px solid #d1d5db;border-radius:8px;padding:.75rem 1rem;min-width:11rem}
.card b{display:block;font-size:1.4rem}
table{border-collapse:collapse;width:100%;margin:.5rem 0}
th,td{border-bottom:1px solid #e5e7eb;padding:.3rem .5rem;text-align:right;vertical-align:top}
th:first-child,td:first-child{text-align:left}
.yes{color:#166534;font-weight:bold}.no{color:#991b1b;font-weight:bold}.unknown{color:#92400e;font-weight:bold}
section.feature{border:1px solid #d1d5db;border-radius:8px;padding:1rem;margin:1rem 0}
.chart{overflow-x:auto}
ul.reasons{margin:.5rem 0 .5rem 1.2rem;padding:0}
"""
VERDICT = {True: ("yes", "yes"), False: ("no", "no"), None: ("unknown", "unknown")}


def _usd(value: float | None) -> str:
    return "–" if value is None else f"${value:,.2f}"


def _verdict(eligible: bool | None) -> str:
    css, text = VERDICT[eligible]
    return f'<span class="{css}">{text}</span>'


def _cost_rows(rows: list[tuple[str, Cost]]) -> str:
    return "".join(
        f"<tr><td>{escape(name)}</td><td>{c.calls:,}</td><td>{c.input_tokens:,}</td><td>{c.output_tokens:,}</td>"
        f"<td>{_usd(c.list_usd)}</td><td>{_usd(c.batch_usd)}</td><td>{_usd(c.flex_usd)}</td></tr>"
        for name, c in rows
    )


COST_HEAD = (
    "<tr><th scope=col>{}</th><th scope=col>calls</th><th scope=col>input tokens</th>"
    "<th scope=col>output tokens</th><th scope=col>list</th><th scope=col>batch</th><th scope=col>flex</th></tr>"
)


def _feature_section(feature: FeatureAudit) -> str:
    reasons = "".join(f"<li>{escape(r)}</li>" for r in feature.reasons)
    profile = charts.hourly_profile(feature, deadlines.hourly_profile(feature.traffic.starts))
    models = sorted(feature.cost.by_model.items(), key=lambda kv: -kv[1].list_usd)
    callers = sorted(feature.cost.by_caller.items(), key=lambda kv: -kv[1].list_usd)
    return (
        f'<section class="feature" aria-label="{escape(feature.name, quote=True)}">'
        f"<h3>{escape(feature.name)}: eligible {_verdict(feature.signals.eligible)}, "
        f"saves {_usd(feature.cost.total.saved_usd)} by batch</h3>"
        f'<ul class="reasons">{reasons}</ul>'
        f'<div class="chart">{profile}</div>'
        f"<table><caption>by model</caption>{COST_HEAD.format('model')}"
        f"{_cost_rows([(f'{p}/{m}', c) for (p, m), c in models])}</table>"
        f"<table><caption>by caller</caption>{COST_HEAD.format('caller')}{_cost_rows(callers)}</table>"
        "</section>"
    )


def _deadline_cells(feature: FeatureAudit) -> str:
    cells = []
    for key in ("1h", "4h", "24h"):
        outcome = feature.deadlines.get(key) if feature.deadlines else None
        cells.append(
            "<td>–</td>"
            if outcome is None
            else f"<td>{outcome.on_time_ratio:.1%} on time<br>{_usd(outcome.saved_usd)} saved</td>"
        )
    return "".join(cells)


def render(audit: Audit, generated: datetime | None = None) -> str:
    """The whole report as one HTML document."""
    total = audit.total()
    when = (generated or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    inputs = "".join(
        f"<li>{escape(i.name)}: {escape(i.format)}, {i.calls:,} calls</li>" for i in audit.inputs
    )
    rows = "".join(
        f"<tr><td>{escape(f.name)}</td><td>{f.cost.total.calls:,}</td><td>{_usd(f.cost.total.list_usd)}</td>"
        f"<td>{_usd(f.cost.total.batch_usd)}</td><td>{_usd(f.cost.total.flex_usd)}</td>"
        f"<td>{_usd(f.cost.total.saved_usd)}</td><td>{_verdict(f.signals.eligible)}</td>{_deadline_cells(f)}</tr>"
        for f in audit.features
    )
    cards = (
        f'<div class="card">calls<b>{total["calls"]:,}</b></div>'
        f'<div class="card">list cost<b>{_usd(total["list_usd"])}</b></div>'
        f'<div class="card">with eligible features by batch<b>{_usd(total["batch_usd"])}</b></div>'
        f'<div class="card">saved<b>{_usd(total["saved_usd"])}</b></div>'
        f'<div class="card">eligible calls<b>{total["eligible_share"]:.1%}</b></div>'
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>batchshift audit</title><style>{STYLE}</style></head>
<body><main>
<h1>Batch eligibility audit</h1>
<p>Generated {when} by <code>batchshift audit</code> from:</p><ul>{inputs}</ul>
<div class="cards">{cards}</div>
<h2>Cost per feature</h2><div class="chart">{charts.cost_bars(audit.features)}</div>
<h2>Deadlines</h2>
<p>The policy lab's simulator run on each feature's traffic, every call given the deadline.</p>
<div class="chart">{charts.deadline_bars(audit.features)}</div>
<h2>Features</h2>
<table><caption>Features, most expensive first; 1 h, 4 h, 24 h: simulated at that deadline</caption>
<thead><tr><th scope=col>feature</th><th scope=col>calls</th><th scope=col>list</th>
<th scope=col>batch</th><th scope=col>flex</th><th scope=col>saved by batch</th><th scope=col>eligible</th>
<th scope=col>1 h</th><th scope=col>4 h</th><th scope=col>24 h</th></tr></thead><tbody>{rows}</tbody></table>
{"".join(_feature_section(f) for f in audit.features)}
</main></body></html>
"""
