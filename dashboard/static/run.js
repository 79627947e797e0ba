/* The run page: loss with alert markers and the divergence step, one layer x step heatmap of
   log10 output norms per site, attention-logit maxima per layer on a log axis against the
   detector's thresholds, attention entropy, grad norm, LR and the alert list. It loads the
   API's downsampled series once, then polls for points after the last step it has and
   redraws in place (Plotly.react), so a long run stays fast and a live one stays current. */
(function () {
  "use strict";
  const cfg = SM.cfg;
  const runId = cfg.run_id;
  const MAX_POINTS = cfg.max_points || 1000;
  const HEAT_BINS = cfg.heatmap_bins || 600;
  const SITE_ORDER = ["qkv", "q", "k", "v", "proj", "fc1", "fc2"];
  const RUN_KEYS = ["loss", "val_loss", "grad_norm", "lr"];
  const ATTN_STATS = ["logit_max", "logit_bound", "entropy_mean"];
  const NORM_STATS = ["l2_mean", "l2_max"];

  const state = { run: null, keys: [], wanted: [], series: {}, alerts: [], last: -1, polls: 0 };

  // Depth as color: layer 0 dark blue ... last layer yellow (viridis anchors).
  const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  function layerColor(i, n) {
    const t = n <= 1 ? 0 : i / (n - 1);
    const p = t * (VIRIDIS.length - 1), k = Math.min(VIRIDIS.length - 2, Math.floor(p)), f = p - k;
    const c = VIRIDIS[k].map((a, j) => Math.round(a + f * (VIRIDIS[k + 1][j] - a)));
    return "rgb(" + c.join(",") + ")";
  }

  // Which keys the page draws, from the run's key list: run-level series, one norm stat per
  // (layer, site) (l2_mean, else l2_max) and the attention stats.
  function chooseKeys(keys) {
    const have = new Set(keys);
    const wanted = RUN_KEYS.filter((k) => have.has(k));
    for (const k of keys) {
      const p = SM.parseKey(k);
      if (p.layer === null) continue;
      if (p.site === "attn" && ATTN_STATS.includes(p.stat)) wanted.push(k);
      else if (SITE_ORDER.includes(p.site) && p.stat === "l2_mean") wanted.push(k);
      else if (SITE_ORDER.includes(p.site) && p.stat === "l2_max"
        && !have.has("layer." + p.layer + "." + p.site + ".l2_mean")) wanted.push(k);
    }
    return wanted;
  }

  function keyList(resp) {
    const items = Array.isArray(resp) ? resp : resp.keys || resp.items || [];
    return items.map((k) => (typeof k === "string" ? k : k.key));
  }

  // Layers, sorted, that have `stat` (or a fallback) at `site`: {layer: key}.
  function layerKeys(site, stats) {
    const out = new Map();
    for (const stat of stats) {
      for (const k of state.wanted) {
        const p = SM.parseKey(k);
        if (p.layer !== null && p.site === site && p.stat === stat && !out.has(p.layer)) out.set(p.layer, k);
      }
    }
    return [...out.entries()].sort((a, b) => a[0] - b[0]);
  }

  // ---- header ---------------------------------------------------------------------------
  function renderHeader() {
    const r = state.run, c = r.config || {}, s = r.summary || {};
    document.title = r.name + " \u00b7 stabmon";
    document.getElementById("run-title").innerHTML =
      SM.esc(r.name) + ' <span class="badge ' + SM.esc(r.status) + '">' + SM.esc(r.status) + "</span>";
    const items = [
      ["project", r.project], ["variant", c.variant], ["lr", c.lr !== undefined ? SM.fmt(c.lr) : null],
      ["preset", c.preset], ["seed", c.seed], ["step", r.last_step],
      ["final loss", s.final_loss !== undefined ? SM.fmt(s.final_loss) : null],
      ["min loss", s.min_loss !== undefined ? SM.fmt(s.min_loss) : null],
      ["val loss", s.val_loss !== undefined ? SM.fmt(s.val_loss) : null],
      ["diverged at", s.diverged_at], ["open alerts", r.open_alerts], ["updated", SM.ago(r.updated_at)],
    ];
    document.getElementById("run-meta").innerHTML = items
      .filter(([, v]) => v !== undefined && v !== null && v !== "")
      .map(([k, v]) => "<span>" + SM.esc(k) + " <b>" + SM.esc(v) + "</b></span>").join("")
      + ' <span><a href="' + cfg.root + "compare?runs=" + encodeURIComponent(r.id) + '">compare\u2026</a></span>';
  }

  // ---- loss -----------------------------------------------------------------------------
  function valueAt(s, step) {
    if (!s || !s.steps.length) return null;
    let lo = 0, hi = s.steps.length - 1;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (s.steps[mid] < step) lo = mid + 1; else hi = mid; }
    const v = s.values[lo];
    return Number.isFinite(v) ? v : null;
  }

  // A log-axis range that keeps the healthy part of a series readable after it explodes: the
  // top is at most `decades` above the 98th percentile (and at least `minTop`), so a run that
  // went to 1e30 does not flatten everything before it into the bottom pixel. Returns the
  // range (log10 units), the clipped top and whether any value lies above it.
  function robustLogRange(seriesValues, decades, minTop) {
    const xs = [];
    for (const vals of seriesValues) for (const v of vals || []) if (Number.isFinite(v) && v > 0) xs.push(v);
    if (!xs.length) return null;
    xs.sort((a, b) => a - b);
    const lo = xs[0], hi = xs[xs.length - 1];
    let top = Math.min(hi, xs[Math.floor(0.98 * (xs.length - 1))] * Math.pow(10, decades));
    if (minTop) top = Math.max(top, minTop);
    const clipped = hi > top * 1.0001;
    const pad = 0.04 * Math.max(0.5, Math.log10(top) - Math.log10(lo));
    return { range: [Math.log10(lo) - pad, Math.log10(top) + pad], top, clipped, peak: hi };
  }

  function offScale(r, what) {
    return { xref: "paper", yref: "paper", x: 0.01, xanchor: "left", y: 1, yanchor: "top", showarrow: false,
      text: "\u2191 " + what + " off scale (peak " + SM.fmt(r.peak) + ")", font: { color: "#d92d20", size: 11 },
      bgcolor: "rgba(255,255,255,0.8)" };
  }

  function lossFigure() {
    const traces = [], shapes = [], annotations = [];
    const loss = state.series.loss, val = state.series.val_loss;
    const yr = robustLogRange([loss && loss.values, val && val.values], 0.5);
    // Where non-finite values and alerts without a finite loss are pinned: the top of the axis.
    const top = yr ? yr.top : null;
    if (yr && yr.clipped) annotations.push(offScale(yr, "loss"));
    if (loss) {
      traces.push({ name: "loss", x: loss.steps, y: SM.finiteOrNull(loss.values), mode: "lines",
        line: { color: "#2f6fed", width: 1.6 } });
      const bad = loss.steps.filter((_, i) => SM.nonFiniteAt(loss, i));
      if (bad.length && top !== null) {
        traces.push({ name: "non-finite loss", x: bad, y: bad.map(() => top), mode: "markers",
          marker: { symbol: "x", color: "#d92d20", size: 8 }, hovertemplate: "step %{x}: NaN/inf<extra></extra>" });
      }
    }
    if (val) {
      traces.push({ name: "validation loss", x: val.steps, y: SM.finiteOrNull(val.values), mode: "lines+markers",
        line: { color: "#e8590c", width: 1.6, dash: "dot" }, marker: { size: 5 } });
    }
    const sevColor = { critical: "#d92d20", warning: "#d97706" };
    for (const sev of ["warning", "critical"]) {
      const al = state.alerts.filter((a) => a.severity === sev);
      if (!al.length) continue;
      traces.push({
        name: sev + " alerts", x: al.map((a) => a.step),
        y: al.map((a) => valueAt(loss, a.step) ?? top), mode: "markers",
        marker: { symbol: "triangle-down", size: 13, color: sevColor[sev], line: { color: "#fff", width: 1 } },
        text: al.map((a) => SM.esc(a.rule) + ": " + SM.esc(a.message)),
        hovertemplate: "%{text}<extra>" + sev + "</extra>",
      });
    }
    const div = (state.run.summary || {}).diverged_at;
    if (div !== undefined && div !== null) {
      shapes.push({ type: "line", xref: "x", yref: "paper", x0: div, x1: div, y0: 0, y1: 1,
        line: { color: "#d92d20", width: 2, dash: "dash" } });
      annotations.push({ xref: "x", yref: "paper", x: div, y: 1, yanchor: "bottom", showarrow: false,
        text: "diverged at step " + div, font: { color: "#d92d20" } });
    }
    return {
      traces,
      layout: SM.layout({ title: { text: "Loss" },
        yaxis: Object.assign({ title: { text: "loss" }, type: "log" }, yr ? { range: yr.range, autorange: false } : {}),
        shapes, annotations }),
    };
  }

  // ---- norms heatmaps ---------------------------------------------------------------------
  function heatFigure(site) {
    const layers = layerKeys(site, NORM_STATS);
    const stat = layers.length ? SM.parseKey(layers[0][1]).stat : "l2_mean";
    const binned = SM.binMax(layers.map(([, k]) => state.series[k]), HEAT_BINS);
    const finite = [];
    const z = binned.rows.map((row) => row.map((v) => {
      if (v === null || Number.isNaN(v) || v <= 0) return null;
      if (!Number.isFinite(v)) return Infinity;
      const l = Math.log10(v);
      finite.push(l);
      return l;
    }));
    // The color scale ends at most one decade above the 98th percentile: after a blow-up to
    // 1e30 the healthy history keeps its contrast, and the exploded cells saturate.
    finite.sort((p, q) => p - q);
    const zmin = finite.length ? finite[0] : 0;
    const zmaxData = finite.length ? finite[finite.length - 1] : 1;
    const zmax = finite.length ? Math.min(zmaxData, finite[Math.floor(0.98 * (finite.length - 1))] + 1) : 1;
    const capped = zmaxData > zmax + 1e-9 || z.some((row) => row.includes(Infinity));
    // Hover shows the norm itself (inf included), the color its log.
    const text = binned.rows.map((row) => row.map((v) => (v === null ? "" : SM.fmt(v))));
    for (const row of z) for (let j = 0; j < row.length; j++) if (row[j] === Infinity) row[j] = Math.max(zmax, zmaxData);
    return {
      traces: [{
        type: "heatmap", name: site, x: binned.x, y: layers.map(([l]) => l), z, text,
        zmin, zmax: Math.max(zmax, zmin + 1e-6), zauto: false,
        colorscale: "Viridis", zsmooth: false, hoverongaps: false,
        colorbar: { title: { text: capped ? "log10 L2 (top: \u2265)" : "log10 L2", side: "right" }, thickness: 12 },
        hovertemplate: "layer %{y}, step %{x}<br>" + stat + " = %{text}<extra>" + site + "</extra>",
      }],
      layout: SM.layout({
        title: { text: site.toUpperCase() + " output norm (" + stat + ")" },
        hovermode: "closest", margin: { r: 10 },
        yaxis: { title: { text: "layer" }, dtick: layers.length > 16 ? undefined : 1 },
      }),
    };
  }

  // ---- attention ------------------------------------------------------------------------
  function logitFigure() {
    let layers = layerKeys("attn", ["logit_max"]);
    let stat = "logit_max";
    if (!layers.length) { layers = layerKeys("attn", ["logit_bound"]); stat = "logit_bound"; }
    const th = (cfg.thresholds || {})[stat] || {};
    const traces = layers.map(([l, k], i) => {
      const s = state.series[k];
      // The bucket maximum: a one-step logit spike must not be averaged away.
      return { name: "layer " + l, x: s ? s.steps : [], y: s ? SM.finiteOrNull(s.max).map((v) => (v > 0 ? v : null)) : [],
        mode: "lines", line: { width: 1.3, color: layerColor(i, layers.length) } };
    });
    const shapes = [], annotations = [];
    // Always show the thresholds and the Wortsman level (a healthy run sits far below them).
    const yr = robustLogRange(traces.map((t) => t.y), 1, 2 * (cfg.logit_divergence_level || th.critical || 1));
    if (yr && yr.clipped) annotations.push(offScale(yr, "logits"));
    const lines = [["warning", th.warning, "#d97706"], ["critical", th.critical, "#d92d20"],
      ["diverged runs (Wortsman et al.)", cfg.logit_divergence_level, "#7a7f8c"]];
    for (const [label, y, color] of lines) {
      if (!y) continue;
      shapes.push({ type: "line", xref: "paper", x0: 0, x1: 1, yref: "y", y0: y, y1: y,
        line: { color, width: 1.5, dash: "dash" } });
      annotations.push({ xref: "paper", x: 1, xanchor: "right", yref: "y", y: Math.log10(y), yanchor: "bottom",
        showarrow: false, text: label + " " + SM.fmt(y), font: { color, size: 11 } });
    }
    return {
      traces,
      layout: SM.layout({
        title: { text: "Attention logit max per layer (" + stat + ")" },
        yaxis: Object.assign({ title: { text: "max |q\u00b7k| / \u221ad" }, type: "log" },
          yr ? { range: yr.range, autorange: false } : {}),
        shapes, annotations,
        legend: { orientation: "v", y: 1, x: 1.02 }, margin: { r: 90 },
      }),
    };
  }

  function entropyFigure() {
    const layers = layerKeys("attn", ["entropy_mean"]);
    if (!layers.length) return null;
    return {
      traces: layers.map(([l, k], i) => {
        const s = state.series[k];
        return { name: "layer " + l, x: s.steps, y: SM.finiteOrNull(s.values), mode: "lines",
          line: { width: 1.3, color: layerColor(i, layers.length) } };
      }),
      layout: SM.layout({ title: { text: "Attention entropy per layer" }, yaxis: { title: { text: "entropy (nats)" } },
        legend: { orientation: "v", y: 1, x: 1.02 }, margin: { r: 90 } }),
    };
  }

  function simpleFigure(key, title, ytitle, logy, color, useMax) {
    const s = state.series[key];
    if (!s) return null;
    const y = SM.finiteOrNull(useMax ? s.max : s.values).map((v) => (logy && v <= 0 ? null : v));
    const yr = logy ? robustLogRange([y], 1) : null;
    const yaxis = { title: { text: ytitle }, type: logy ? "log" : "linear", exponentformat: "e" };
    if (yr) Object.assign(yaxis, { range: yr.range, autorange: false });
    return {
      traces: [{ name: key, x: s.steps, y, mode: "lines", line: { color, width: 1.4 } }],
      layout: SM.layout({ title: { text: title }, showlegend: false, yaxis,
        annotations: yr && yr.clipped ? [offScale(yr, key)] : [] }),
    };
  }

  // ---- alerts table ----------------------------------------------------------------------
  // Evidence, compact: scalar fields as "name: value", then one line per implicated series
  // (the detector lists the worst first) instead of a tall JSON tree.
  function evidenceText(ev) {
    if (!ev || typeof ev !== "object") return String(ev ?? "");
    const lines = [];
    for (const [k, v] of Object.entries(ev)) {
      if (k === "series" && Array.isArray(v)) continue;
      lines.push(k + ": " + (typeof v === "object" ? JSON.stringify(v) : v));
    }
    for (const row of Array.isArray(ev.series) ? ev.series : []) {
      if (!row || typeof row !== "object") { lines.push(String(row)); continue; }
      const rest = Object.entries(row).filter(([k]) => k !== "key")
        .map(([k, v]) => k + "=" + (typeof v === "number" ? SM.fmt(v) : typeof v === "object" ? JSON.stringify(v) : v));
      lines.push((row.key ?? "") + "  " + rest.join("  "));
    }
    return lines.join("\n");
  }

  function renderAlerts() {
    const el = document.getElementById("alerts");
    if (!state.alerts.length) { el.innerHTML = '<div class="empty">No alerts for this run.</div>'; return; }
    const rows = state.alerts.slice().sort((a, b) => (a.status === b.status ? b.step - a.step : a.status === "open" ? -1 : 1));
    el.innerHTML = '<table class="data" id="alerts-table"><thead><tr><th>severity</th><th>rule</th><th>status</th>'
      + '<th class="num">first step</th><th class="num">last step</th><th>message</th><th>evidence</th></tr></thead><tbody>'
      + rows.map((a) => "<tr><td><span class=\"badge " + SM.esc(a.severity) + "\">" + SM.esc(a.severity) + "</span></td>"
        + "<td><code>" + SM.esc(a.rule) + "</code></td>"
        + "<td><span class=\"badge " + SM.esc(a.status) + "\">" + SM.esc(a.status) + "</span></td>"
        + '<td class="num">' + SM.esc(a.step) + '</td><td class="num">' + SM.esc(a.last_step) + "</td>"
        + '<td class="wrap">' + SM.esc(a.message) + "</td>"
        + '<td class="evidence"><details><summary>show</summary><pre>' + SM.esc(evidenceText(a.evidence)) + "</pre></details></td></tr>")
        .join("") + "</tbody></table>";
  }

  // ---- drawing ---------------------------------------------------------------------------
  function sitesPresent() {
    return SITE_ORDER.filter((site) => layerKeys(site, NORM_STATS).length);
  }

  function ensureHeatDivs(sites) {
    const box = document.getElementById("heatmaps");
    for (const site of sites) {
      if (document.getElementById("heat-" + site)) continue;
      const card = document.createElement("div");
      card.className = "card";
      card.innerHTML = '<div id="heat-' + site + '" class="plot" data-site="' + site + '"></div>';
      box.appendChild(card);
    }
    if (!sites.length) box.innerHTML = '<div class="empty">No per-layer output norms recorded for this run.</div>';
  }

  // One step range for every plot, so the heatmaps and the line plots line up column for
  // column; uirevision keeps a user's zoom across live redraws.
  function stepRange() {
    let lo = Infinity;
    for (const s of Object.values(state.series)) if (s.steps.length) lo = Math.min(lo, s.steps[0]);
    return Number.isFinite(lo) && state.last > lo ? [lo, state.last] : null;
  }

  function draw(id, fig, emptyText) {
    const el = document.getElementById(id);
    if (!fig || !fig.traces.length) {
      if (el.data) Plotly.purge(el);
      el.innerHTML = '<div class="empty">' + SM.esc(emptyText) + "</div>";
      el.classList.add("is-empty");
      return Promise.resolve();
    }
    if (el.classList.contains("is-empty")) { el.innerHTML = ""; el.classList.remove("is-empty"); }
    const range = stepRange();
    const layout = Object.assign({}, fig.layout, { uirevision: runId });
    if (range) layout.xaxis = Object.assign({}, layout.xaxis, { range, autorange: false });
    return Plotly.react(el, fig.traces, layout, SM.PLOT_CONFIG);
  }

  // Every plot of the page, by div id: how to draw it from the current state.
  const PLOTS = {
    "plot-loss": () => draw("plot-loss", lossFigure(), "No loss recorded yet."),
    "plot-logits": () => draw("plot-logits", logitFigure(), "No attention-logit statistics recorded."),
    "plot-entropy": () => draw("plot-entropy", entropyFigure(), "No attention entropy recorded."),
    "plot-grad": () => draw("plot-grad", simpleFigure("grad_norm", "Gradient norm (bucket max)", "grad norm", true,
      "#7048e8", true), "No grad norm recorded."),
    "plot-lr": () => draw("plot-lr", simpleFigure("lr", "Learning rate", "lr", false, "#0c8599"), "No learning rate recorded."),
  };
  function plotIds() { return [...Object.keys(PLOTS), ...sitesPresent().map((site) => "heat-" + site)]; }
  function drawPlot(id) { return id.startsWith("heat-") ? draw(id, heatFigure(id.slice(5)), "") : PLOTS[id](); }

  function drawAll() {
    renderHeader();
    renderAlerts();
    ensureHeatDivs(sitesPresent());
    return Promise.all(plotIds().map(drawPlot));
  }

  // The first load fetches the series in groups, one per set of plots (run-level series,
  // each site's norms, the attention statistics), in parallel, and draws each set as soon as
  // its group arrives: the loss shows up while the heatmaps' larger queries still run.
  function keyGroups() {
    const groups = new Map();
    for (const k of state.wanted) {
      const p = SM.parseKey(k);
      const g = p.layer === null ? "run" : p.site === "attn" ? "attn" : "heat-" + p.site;
      if (!groups.has(g)) groups.set(g, []);
      groups.get(g).push(k);
    }
    const plotsOf = { run: ["plot-loss", "plot-grad", "plot-lr"], attn: ["plot-logits", "plot-entropy"] };
    return [...groups.entries()].map(([g, keys]) => ({ keys, plots: plotsOf[g] || [g] }));
  }

  async function firstRender() {
    renderHeader();
    renderAlerts();
    ensureHeatDivs(sitesPresent());
    const drawn = new Set();
    const ranges = new Map();
    await Promise.all(keyGroups().map(async (g) => {
      const add = await SM.fetchSeries(runId, g.keys, { max_points: MAX_POINTS });
      Object.assign(state.series, add);
      state.last = Math.max(state.last, SM.lastStep(add));
      await Promise.all(g.plots.map((id) => { drawn.add(id); ranges.set(id, JSON.stringify(stepRange())); return drawPlot(id); }));
      if (window.__stabmonFirstPlot === undefined) window.__stabmonFirstPlot = performance.now();
    }));
    // Plots without data get their empty-state note; plots drawn before the last group
    // arrived get the final common step range.
    const final = stepRange();
    await Promise.all(plotIds().map((id) => {
      if (!drawn.has(id)) return drawPlot(id);
      const el = document.getElementById(id);
      if (final && el.data && ranges.get(id) !== JSON.stringify(final)) {
        return Plotly.relayout(el, { "xaxis.range": final, "xaxis.autorange": false });
      }
      return Promise.resolve();
    }));
  }

  // ---- loading and live updates -----------------------------------------------------------
  async function loadAll() {
    const [run, keys, alerts] = await Promise.all([
      SM.api("/runs/" + encodeURIComponent(runId)),
      SM.api("/runs/" + encodeURIComponent(runId) + "/keys"),
      SM.api("/runs/" + encodeURIComponent(runId) + "/alerts"),
    ]);
    state.run = run;
    state.keys = keyList(keys);
    state.wanted = chooseKeys(state.keys);
    state.alerts = Array.isArray(alerts) ? alerts : alerts.items || [];
    state.series = {};
    state.last = -1;
  }

  function tooDense() {
    for (const s of Object.values(state.series)) if (s.steps.length > 3 * MAX_POINTS) return true;
    return false;
  }

  async function refresh() {
    state.polls += 1;
    const base = "/runs/" + encodeURIComponent(runId);
    const [run, alerts] = await Promise.all([SM.api(base), SM.api(base + "/alerts")]);
    const wasRunning = state.run.status === "running";
    state.run = run;
    state.alerts = Array.isArray(alerts) ? alerts : alerts.items || [];
    // New series (val_loss appearing at the first evaluation, say): re-read the key list now
    // and then, and when the run ends.
    if (state.polls % 10 === 0 || run.status !== "running" || !state.wanted.length) {
      const keys = keyList(await SM.api(base + "/keys"));
      if (keys.length !== state.keys.length) {
        state.keys = keys;
        const wanted = chooseKeys(keys);
        const fresh = wanted.filter((k) => !state.wanted.includes(k));
        state.wanted = wanted;
        if (fresh.length) {
          // Up to the step the other series are at, so one `from` keeps serving them all
          // (with no data yet, every wanted key is fresh and this is the whole load).
          const params = { max_points: MAX_POINTS };
          if (state.last >= 0) params.to = state.last;
          const add = await SM.fetchSeries(runId, fresh, params);
          Object.assign(state.series, add);
          if (state.last < 0) state.last = SM.lastStep(add);
        }
      }
    }
    if (run.last_step !== null && run.last_step > state.last && state.wanted.length) {
      const add = await SM.fetchSeries(runId, state.wanted, { from: state.last + 1, max_points: MAX_POINTS });
      SM.appendSeries(state.series, add);
      state.last = Math.max(state.last, SM.lastStep(state.series));
      // Appended raw points pile up on a long live session: re-read the downsampled view.
      if (tooDense()) state.series = await SM.fetchSeries(runId, state.wanted, { max_points: MAX_POINTS });
    }
    await drawAll();
    window.__stabmonUpdates = (window.__stabmonUpdates || 0) + 1;
    const live = run.status === "running";
    SM.setLive(live ? "live \u00b7 step " + (run.last_step ?? "\u2013") : run.status);
    // Keep polling a finished run once more (its last batch may land after the status change).
    return live || wasRunning;
  }

  async function main() {
    try {
      await loadAll();
      await firstRender();
      window.__stabmonRendered = performance.now();
    } catch (e) {
      SM.showError("plot-loss", e);
      window.__stabmonError = String(e && e.message ? e.message : e);
      return;
    }
    const live = state.run.status === "running";
    SM.setLive(live ? "live \u00b7 step " + (state.run.last_step ?? "\u2013") : state.run.status);
    if (live) SM.poll(refresh, cfg.poll_ms || 3000, (e) => SM.setLive("collector unreachable: retrying (" + e.message + ")"));
  }

  main();
})();
