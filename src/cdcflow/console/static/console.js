// The cdcflow console: one EventSource (/events) feeds the tables and the uPlot charts.
// Every value is put in the page with textContent, never as HTML.
"use strict";
(() => {
  const HEALTHY_CAPTURE = ["OK", "BACKFILL"];
  const HEALTHY_PROJECTION = ["OK", "INIT", "REMOVED"];
  const COLORS = ["#2563eb", "#059669", "#d97706", "#7c3aed", "#db2777", "#0891b2", "#65a30d", "#475569"];
  const state = { points: [], seconds: 900, captures: [], projections: [], chosen: null, charts: {}, source: null };
  window.cdcflowConsole = state; // for the browser test and curious users

  const $ = (sel) => document.querySelector(sel);
  const dash = "\u2013";

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function badge(text, ok) {
    const b = el("span", text, "badge " + (ok ? "ok" : text === "ERROR" || text === "GAP" ? "bad" : "warn"));
    return b;
  }

  function seconds(v) {
    if (v === null || v === undefined) return dash;
    if (v < 10) return v.toFixed(2) + " s";
    if (v < 120) return v.toFixed(1) + " s";
    if (v < 7200) return (v / 60).toFixed(1) + " min";
    return (v / 3600).toFixed(1) + " h";
  }

  function bytes(v) {
    if (v === null || v === undefined) return dash;
    const units = ["B", "kB", "MB", "GB", "TB"];
    let i = 0;
    while (v >= 1000 && i < units.length - 1) { v /= 1000; i++; }
    return (i ? v.toFixed(1) : String(v)) + " " + units[i];
  }

  const int = (v) => (v === null || v === undefined ? dash : Number(v).toLocaleString("en-US"));
  const rate = (v) => (v === null || v === undefined ? dash : Math.round(v).toLocaleString("en-US") + "/s");
  const clock = (t) => new Date(t * 1000).toLocaleTimeString("en-GB");

  function row(cells) {
    const tr = document.createElement("tr");
    for (const c of cells) tr.appendChild(c instanceof Node ? c : el("td", c));
    return tr;
  }

  function cell(child, cls) {
    const td = el("td", null, cls);
    if (child instanceof Node) td.appendChild(child); else td.textContent = child ?? dash;
    return td;
  }

  // -- tables --------------------------------------------------------------------

  function renderCaptures(captures) {
    const body = $("#captures tbody");
    body.replaceChildren(...captures.map((c) => {
      const tr = row([
        cell(c.capture), cell(c.table), cell(badge(c.state, HEALTHY_CAPTURE.includes(c.state)), "state"),
        cell(c.watermark, "mono"), cell(seconds(c.lag_seconds), "num"), cell(bytes(c.lag_bytes), "num"),
        cell(int(c.rows_staged), "num"), cell(c.gap, "mono"), cell(c.owner, "small"),
        cell(c.last_error, c.last_error ? "err" : "small"),
      ]);
      tr.dataset.name = c.capture;
      tr.dataset.state = c.state;
      return tr;
    }));
  }

  function renderProjections(projections) {
    const body = $("#projections tbody");
    body.replaceChildren(...projections.map((p) => {
      const kept = p.mode === "incremental" ? "incrementally" : p.mode === "full" ? "full recompute" : dash;
      const tr = row([
        cell(p.projection), cell(badge(p.status, HEALTHY_PROJECTION.includes(p.status)), "state"), cell(kept),
        cell(p.as_of, "mono"), cell(seconds(p.freshness_seconds), "num"), cell(int(p.restated_buckets), "num"),
        cell(p.owner, "small"), cell(p.last_error, p.last_error ? "err error" : "small error"),
      ]);
      tr.dataset.name = p.projection;
      tr.dataset.state = p.status;
      return tr;
    }));
  }

  function renderHeader(tick) {
    const st = tick.status;
    const problems = [];
    if (tick.error) problems.push(tick.error);
    if (st) problems.push(...st.problems);
    const h = $("#health");
    if (!st) { h.textContent = "status unavailable"; h.className = "badge bad"; }
    else if (!problems.length) { h.textContent = "healthy"; h.className = "badge ok"; }
    else { h.textContent = problems.length + (problems.length === 1 ? " problem" : " problems"); h.className = "badge bad"; }
    const box = $("#problems");
    box.hidden = !problems.length;
    box.querySelector("ul").replaceChildren(...problems.map((p) => el("li", p)));
    $("#updated").textContent = "updated " + clock(tick.at);
    if (st) {
      let text = "source " + st.source_name + " (" + st.engine + ")";
      if (!st.source_reachable) text += ", unreachable";
      if (st.slot) {
        text += " \u00b7 slot " + st.slot.name + (st.slot.active ? " active" : " inactive") +
          ", " + bytes(st.slot.retained_wal_bytes) + " WAL retained";
      }
      $("#source").textContent = text;
      const bf = $("#backfills");
      bf.hidden = !st.backfills.length;
      bf.textContent = st.backfills.map((b) => "backfilling " + b.capture + ": " + int(b.rows_done) + " rows" +
        (b.rows_estimate ? " of about " + int(b.rows_estimate) : "") + (b.rows_per_second ? ", " + rate(b.rows_per_second) : "")).join("; ");
    }
  }

  function renderChoice(projections) {
    const select = $("#rows-choice");
    const names = projections.map((p) => p.projection);
    const have = Array.from(select.options).map((o) => o.value);
    if (names.join() !== have.join()) select.replaceChildren(...names.map((n) => { const o = el("option", n); o.value = n; return o; }));
    if (state.chosen && names.includes(state.chosen)) select.value = state.chosen;
  }

  function renderRows(data) {
    if (!state.chosen) { state.chosen = data.projection; $("#rows-choice").value = data.projection; }
    if (data.projection !== state.chosen) return;
    const table = $("#rows");
    table.dataset.projection = data.projection;
    table.tHead.replaceChildren(row(data.columns.map((c, i) => el("th", c, data.numeric[i] ? "num" : ""))));
    table.tBodies[0].replaceChildren(...data.rows.map((r) => row(r.map((v, i) => cell(v, data.numeric[i] ? "num" : "")))));
    $("#rows-note").textContent = data.error ? "cannot read " + data.projection + ": " + data.error
      : data.rows.length ? "the last " + data.rows.length + " rows by " + data.order + ", live" : "no rows yet";
  }

  // -- charts --------------------------------------------------------------------

  const CHARTS = {
    rate: { fmt: rate, names: () => ["staged"], value: (p) => p.rate, badOf: () => state.captures },
    lag: { fmt: seconds, names: () => state.captures, value: (p, n) => p.lag[n], badOf: () => state.captures },
    fresh: { fmt: seconds, names: () => state.projections, value: (p, n) => p.fresh[n], badOf: () => state.projections },
  };

  function shadeBad(u, key) {
    const relevant = new Set(CHARTS[key].badOf());
    const pts = state.points;
    const ctx = u.ctx;
    ctx.save();
    ctx.fillStyle = "rgba(220, 38, 38, 0.14)";
    for (let i = 0; i < pts.length; i++) {
      if (!pts[i].bad.some((n) => relevant.has(n))) continue;
      const x0 = u.valToPos(pts[i].t, "x", true);
      const x1 = i + 1 < pts.length ? u.valToPos(pts[i + 1].t, "x", true) : x0 + 2;
      ctx.fillRect(x0, u.bbox.top, Math.max(1, x1 - x0), u.bbox.height);
    }
    ctx.restore();
  }

  function chartData(key) {
    const c = CHARTS[key];
    const pts = state.points;
    return [pts.map((p) => p.t), ...c.names().map((n) => pts.map((p) => { const v = c.value(p, n); return v === undefined ? null : v; }))];
  }

  function makeChart(key) {
    const c = CHARTS[key];
    const box = document.querySelector("#chart-" + key + " .plot");
    const opts = {
      width: Math.max(200, box.clientWidth), height: 190,
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max || 0, key === "rate" ? 10 : 1) * 1.1] } },
      series: [{}, ...c.names().map((n, i) => ({ label: n, stroke: COLORS[i % COLORS.length], width: 1.75, value: (u, v) => c.fmt(v), points: { show: false } }))],
      axes: [{ stroke: "#667085", grid: { stroke: "#eef0f3" }, space: 70, incrs: [1, 5, 10, 15, 30, 60, 120, 300, 600],
        values: (u, vals) => vals.map((v) => clock(v)) },
        { stroke: "#667085", grid: { stroke: "#eef0f3" }, size: 64, values: (u, vals) => vals.map((v) => key === "rate" ? int(v) : seconds(v)) }],
      legend: { show: key !== "rate", live: false },
      hooks: { drawClear: [(u) => shadeBad(u, key)] },
    };
    const chart = new uPlot(opts, chartData(key), box);
    chart.names = c.names().join("\u0000");
    return chart;
  }

  function redraw() {
    for (const key of Object.keys(CHARTS)) {
      const c = CHARTS[key];
      let chart = state.charts[key];
      if (!chart || chart.names !== c.names().join("\u0000")) {
        if (chart) chart.destroy();
        chart = state.charts[key] = makeChart(key);
      } else {
        chart.setData(chartData(key));
      }
      const last = state.points[state.points.length - 1];
      const values = last ? c.names().map((n) => c.value(last, n)).filter((v) => v !== null && v !== undefined) : [];
      const latest = values.length ? (key === "rate" ? values[0] : Math.max(...values)) : null;
      const b = document.querySelector('[data-latest="' + key + '"]');
      b.textContent = latest === null ? dash : (key === "rate" ? c.fmt(latest) : (values.length > 1 ? "max " : "") + c.fmt(latest));
      b.dataset.value = latest === null ? "" : String(latest);
      const bad = last && last.bad.some((n) => c.badOf().includes(n));
      document.getElementById("chart-" + key).classList.toggle("bad", Boolean(bad));
    }
  }

  function addPoints(points) {
    const lastT = state.points.length ? state.points[state.points.length - 1].t : 0;
    for (const p of points) if (p.t > lastT) state.points.push(p);
    const from = state.points.length ? state.points[state.points.length - 1].t - state.seconds : 0;
    while (state.points.length && state.points[0].t < from) state.points.shift();
  }

  new ResizeObserver(() => {
    for (const key of Object.keys(state.charts)) {
      const box = document.querySelector("#chart-" + key + " .plot");
      state.charts[key].setSize({ width: Math.max(200, box.clientWidth), height: 190 });
    }
  }).observe(document.querySelector(".charts"));

  // -- the stream ----------------------------------------------------------------

  let source = null;

  function connect() {
    if (source) source.close();
    source = new EventSource("/events" + (state.chosen ? "?rows=" + encodeURIComponent(state.chosen) : ""));
    state.source = source;
    source.addEventListener("history", (e) => {
      const d = JSON.parse(e.data);
      state.seconds = d.seconds;
      state.points = [];
      addPoints(d.points);
    });
    source.addEventListener("tick", (e) => {
      const d = JSON.parse(e.data);
      if (d.status) {
        state.captures = d.status.captures.map((c) => c.capture);
        state.projections = d.status.projections.map((p) => p.projection);
        renderCaptures(d.status.captures);
        renderProjections(d.status.projections);
        renderChoice(d.status.projections);
      }
      addPoints(d.points);
      renderHeader(d);
      redraw();
    });
    source.addEventListener("rows", (e) => renderRows(JSON.parse(e.data)));
    source.onerror = () => {
      const h = $("#health");
      h.textContent = "reconnecting";
      h.className = "badge warn";
    };
  }

  $("#rows-choice").addEventListener("change", (e) => {
    state.chosen = e.target.value;
    connect();
  });
  connect();
})();
