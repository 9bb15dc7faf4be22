"""The audit's HTML report opens in Chromium without a console error and draws its charts."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchshift.cli import main
from tests import audit_fixtures

pytest.importorskip("playwright")  # the browser tests' dependency (the dev extra); skipped without it


def test_the_audit_report_opens_without_console_errors(tmp_path: Path, browser_page, capsys) -> None:
    page = browser_page
    log, report = tmp_path / "otlp.json", tmp_path / "audit-report.html"
    audit_fixtures.write_otlp(log, audit_fixtures.calls(3000, seed=7))
    assert main(["audit", str(log), "--html", str(report)]) == 0
    capsys.readouterr()
    problems: list[str] = []
    page.on(
        "console",
        lambda message: problems.append(message.text) if message.type in ("error", "warning") else None,
    )
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("requestfailed", lambda request: problems.append(f"request failed: {request.url}"))
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(report.as_uri())
    page.wait_for_load_state("load")
    assert page.title() == "batchshift audit"
    assert page.get_by_role("heading", name="Batch eligibility audit").is_visible()
    # The cost chart, the deadline chart and one arrival profile per feature, each labelled for screen readers.
    charts = page.locator("svg[role=img]")
    assert charts.count() == 2 + 6
    assert page.get_by_role("img", name="List cost against batch cost per feature").is_visible()
    box = page.get_by_role(
        "img", name="Share saved and on time at deadlines of 1, 4 and 24 hours"
    ).bounding_box()
    assert box is not None
    assert box["height"] > 100
    assert page.get_by_role("region", name="nightly-summary").is_visible()
    page.screenshot(path=str(tmp_path / "audit-report.png"), full_page=True)
    assert problems == []
    assert requests == [report.as_uri()]  # self-contained: nothing else fetched
