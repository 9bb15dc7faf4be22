"""Accessibility checks run in the page: labelled controls, semantic tables, named images and text
contrast (WCAG AA: 4.5:1, 3:1 for large text), computed from the styles the browser applied."""

from __future__ import annotations

from playwright.sync_api import Page

CHECKS = r"""
() => {
  const problems = [];
  const name = (el) => el.id ? "#" + el.id : el.tagName.toLowerCase() + "." + el.className;
  for (const el of document.querySelectorAll("input:not([type=hidden]), select, textarea")) {
    if (!(el.labels && el.labels.length) && !el.getAttribute("aria-label")) problems.push("unlabelled " + name(el));
  }
  for (const table of document.querySelectorAll("table")) {
    if (!table.caption) problems.push("table without caption " + name(table));
    for (const th of table.querySelectorAll("thead th")) {
      if (th.getAttribute("scope") !== "col") problems.push("header without scope in " + name(table));
    }
  }
  for (const img of document.querySelectorAll("svg[role=img], img")) {
    if (!img.getAttribute("aria-labelledby") && !img.getAttribute("aria-label") && !img.getAttribute("alt")) {
      problems.push("unnamed image " + name(img));
    }
  }
  for (const frame of document.querySelectorAll("iframe")) {
    if (!frame.title) problems.push("untitled frame " + name(frame));
  }
  const rgb = (s) => (s.match(/[\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const c = [r, g, b].map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
  };
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] > 0)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const el = node.parentElement;
    if (!node.textContent.trim() || !el || el.closest("svg, .skip, .visually-hidden")) continue;
    const style = getComputedStyle(el);
    if (style.visibility === "hidden" || style.display === "none") continue;
    const [a, b] = [lum(rgb(style.color)), lum(background(el))];
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const size = parseFloat(style.fontSize);
    const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
    if (ratio < (large ? 3 : 4.5)) problems.push("contrast " + ratio.toFixed(2) + " for '" + node.textContent.trim().slice(0, 30) + "'");
  }
  return problems;
}
"""


def problems(page: Page) -> list[str]:
    """What the page gets wrong, empty when nothing."""
    found: list[str] = page.evaluate(CHECKS)
    return found
