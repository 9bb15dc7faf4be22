"""The accessibility checks the console's pages pass do catch what they look for."""

from __future__ import annotations

from playwright.sync_api import Page

from tests.browser import accessibility


def test_checks_find_unlabelled_controls_bare_tables_and_low_contrast(browser_page: Page):
    browser_page.set_content(
        "<main><input id='q'><table><thead><tr><th>a</th></tr></thead></table>"
        "<p style='color:#999999;background:#ffffff'>faint</p><svg role='img'></svg></main>"
    )
    found = accessibility.problems(browser_page)
    assert "unlabelled #q" in found
    assert any(p.startswith("table without caption") for p in found)
    assert any(p.startswith("header without scope") for p in found)
    assert any(p.startswith("contrast 2.85 for 'faint'") for p in found)
    assert any(p.startswith("unnamed image") for p in found)


def test_a_well_made_page_passes(browser_page: Page):
    browser_page.set_content(
        "<main><label for='q'>Query</label><input id='q'><table><caption>c</caption>"
        "<thead><tr><th scope='col'>a</th></tr></thead></table><p style='color:#4a5561'>muted</p></main>"
    )
    assert accessibility.problems(browser_page) == []
