// batchshift console: the lanes table refreshes itself from /ui/data/lanes (the figures GET /v1/lanes
// serves). Rows are built with textContent only: no value is ever parsed as HTML.
"use strict";

(function () {
  const table = document.getElementById("lanes");
  if (!table) return;
  const source = table.dataset.source;
  const every = Number(table.dataset.refreshMs) || 5000;
  const status = document.getElementById("lanes-status");

  const num = (v, digits) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
  const pct = (v) => (v === null || v === undefined ? "–" : (v * 100).toFixed(1) + "%");

  function cell(tag, text, cls) {
    const el = document.createElement(tag);
    el.textContent = text;
    if (cls) el.className = cls;
    return el;
  }

  function row(lane) {
    const tr = document.createElement("tr");
    tr.dataset.lane = lane.lane;
    const name = cell("th", lane.lane);
    name.scope = "row";
    tr.append(name);
    const state = document.createElement("td");
    state.dataset.field = "state";
    state.append(cell("span", lane.state || "not judged yet", "state state-" + (lane.state || "unknown")));
    tr.append(state);
    const t = lane.turnaround_s || {};
    const burns = Object.keys(lane.burn_rates || {}).sort()
      .map((rule) => rule + ": " + num(lane.burn_rates[rule].long, 2) + " / " + num(lane.burn_rates[rule].short, 2));
    const burnCell = document.createElement("td");
    burnCell.dataset.field = "burn";
    if (burns.length) {
      const list = document.createElement("ul");
      list.className = "burns";
      for (const text of burns) list.append(cell("li", text));
      burnCell.append(list);
    } else {
      burnCell.textContent = "–";
    }
    const cells = [
      ["queued", String(lane.queued), "n"],
      ["oldest", num(lane.oldest_job_age_s, 1), "n"],
      ["in_flight", String(lane.batches_in_flight), "n"],
      ["turnaround", [t.p50, t.p95, t.p99].map((v) => num(v, 1)).join(" / "), "n"],
      ["on_time", pct(lane.on_time_ratio), "n"],
    ];
    for (const [field, text, cls] of cells) {
      const td = cell("td", text, cls);
      td.dataset.field = field;
      tr.append(td);
    }
    tr.append(burnCell);
    const share = cell("td", pct(lane.sync_share), "n");
    share.dataset.field = "sync_share";
    tr.append(share);
    return tr;
  }

  async function refresh() {
    try {
      const answer = await fetch(source, { credentials: "same-origin", headers: { accept: "application/json" } });
      if (answer.status === 401) {
        window.location.assign("/ui/login");
        return;
      }
      if (!answer.ok) throw new Error("HTTP " + answer.status);
      const lanes = (await answer.json()).data;
      const body = document.createElement("tbody");
      if (lanes.length === 0) {
        const tr = document.createElement("tr");
        tr.className = "empty";
        const td = cell("td", "No lanes yet: enqueue a job and its lane appears here.");
        td.colSpan = 9;
        tr.append(td);
        body.append(tr);
      }
      for (const lane of lanes) body.append(row(lane));
      table.tBodies[0].replaceWith(body);
      table.dataset.refreshed = String(Number(table.dataset.refreshed || 0) + 1);
      status.textContent = "Updated " + new Date().toLocaleTimeString() + "; refreshes every " + every / 1000 + " s.";
    } catch (err) {
      status.textContent = "Could not refresh (" + err.message + "); retrying.";
    }
  }

  window.setInterval(refresh, every);
})();
