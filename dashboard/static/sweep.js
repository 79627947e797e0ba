/* The learning-rate sweep (/sweep): final (or minimum, or validation) loss against learning
   rate, one line per norm variant, diverged runs drawn as crosses pinned above the best
   curves — the central picture of Rybakov et al. (2024): stabler variants keep a low loss to
   higher learning rates. A point opens its run; picking an LR column opens the compare
   page for all variants at that LR. */
(function () {
  "use strict";
  const cfg = SM.cfg;
  const q = new URLSearchParams(location.search);
  let runs = [];

  function num(v) {
    if (v === undefined || v === null || v === "") return null;
    const x = typeof v === "string" ? (["nan", "inf", "-inf"].includes(v) ? SM.decode(v) : Number(v)) : v;
    return typeof x === "number" ? x : null;
  }

  function isDiverged(r, y) {
    const s = r.summary || {};
    return r.status === "diverged" || s.diverged === true || (s.diverged_at !== undefined && s.diverged_at !== null)
      || (y !== null && !Number.isFinite(y));
  }

  function median(xs) {
    const a = xs.slice().sort((p, q2) => p - q2);
    const n = a.length;
    return n % 2 ? a[(n - 1) / 2] : (a[n / 2 - 1] + a[n / 2]) / 2;
  }

  function fillPresets() {
    const sel = document.getElementById("preset");
    const cur = sel.value || q.get("preset") || "";
    const presets = [...new Set(runs.map((r) => (r.config || {}).preset).filter((p) => p !== undefined && p !== null))].sort();
    sel.innerHTML = '<option value="">all presets</option>' + presets.map((p) =>
      '<option value="' + SM.esc(p) + '"' + (String(p) === cur ? " selected" : "") + ">" + SM.esc(p) + "</option>").join("");
  }

  function render() {
    const metric = document.getElementById("metric").value;
    const preset = document.getElementById("preset").value;
    const params = new URLSearchParams();
    if (metric !== "final_loss") params.set("metric", metric);
    if (preset) params.set("preset", preset);
    history.replaceState(null, "", location.pathname + (params.toString() ? "?" + params : ""));

    const points = [];
    let skipped = 0;
    for (const r of runs) {
      const c = r.config || {}, s = r.summary || {};
      if (preset && String(c.preset) !== preset) continue;
      const lr = num(c.lr);
      const y = num(s[metric]);
      const diverged = isDiverged(r, y);
      if (lr === null || lr <= 0 || (y === null && !diverged) || r.status === "running") { skipped++; continue; }
      points.push({ run: r, variant: c.variant ?? "(none)", lr, y, diverged });
    }
    const finite = points.filter((p) => !p.diverged && Number.isFinite(p.y)).map((p) => p.y);
    // Diverged runs have no meaningful loss: pin them just above the worst finite value.
    const cap = finite.length ? Math.max(...finite) * 1.12 : 10;
    const variants = [...new Set(points.map((p) => p.variant))].sort();
    const traces = [];
    variants.forEach((v, i) => {
      const color = SM.variantColor(v, i);
      const mine = points.filter((p) => p.variant === v);
      // Runs stopped early (e.g. by the alert policy) are shown, but their loss is not a final
      // loss: they stay out of the line.
      const ok = mine.filter((p) => !p.diverged && p.run.status !== "stopped");
      const bad = mine.filter((p) => p.diverged);
      const stopped = mine.filter((p) => !p.diverged && p.run.status === "stopped" && Number.isFinite(p.y));
      // The line: median over seeds of the non-diverged runs at each LR.
      const lrs = [...new Set(ok.map((p) => p.lr))].sort((a, b) => a - b);
      traces.push({
        name: v, legendgroup: v, x: lrs, y: lrs.map((lr) => median(ok.filter((p) => p.lr === lr).map((p) => p.y))),
        mode: "lines+markers", line: { color, width: 2 }, marker: { color, size: 8 },
        customdata: lrs.map((lr) => ok.filter((p) => p.lr === lr).map((p) => p.run.id).join(",")),
        hovertemplate: v + "<br>lr %{x:.2e}<br>" + metric + " %{y:.4f}<extra></extra>",
      });
      if (stopped.length) {
        traces.push({
          name: v + " stopped", legendgroup: v, showlegend: false, x: stopped.map((p) => p.lr), y: stopped.map((p) => p.y),
          mode: "markers", marker: { symbol: "circle-open", size: 10, line: { color, width: 2 }, color },
          customdata: stopped.map((p) => p.run.id),
          text: stopped.map((p) => SM.esc(p.run.name) + " stopped early"),
          hovertemplate: "%{text}<br>lr %{x:.2e}<br>" + metric + " %{y:.4f}<extra>" + v + "</extra>",
        });
      }
      if (bad.length) {
        traces.push({
          name: v + " diverged", legendgroup: v, showlegend: false, x: bad.map((p) => p.lr), y: bad.map(() => cap),
          mode: "markers", marker: { symbol: "x-thin", size: 13, line: { color, width: 2.5 }, color },
          customdata: bad.map((p) => p.run.id),
          text: bad.map((p) => SM.esc(p.run.name) + " diverged" + ((p.run.summary || {}).diverged_at !== undefined
            ? " at step " + p.run.summary.diverged_at : "")),
          hovertemplate: "%{text}<br>lr %{x:.2e}<extra>" + v + "</extra>",
        });
      }
    });
    const el = document.getElementById("plot-sweep");
    document.getElementById("note").textContent = points.length + " runs shown"
      + (skipped ? "; " + skipped + " running, or without a learning rate or " + metric + ", left out" : "") + ".";
    if (!points.length) {
      el.innerHTML = '<div class="empty">No finished runs with a learning rate and a ' + SM.esc(metric) + " yet.</div>";
      return Promise.resolve();
    }
    if (!el.data) el.innerHTML = "";
    return Plotly.react(el, traces, SM.layout({
      title: { text: metric.replace("_", " ") + " vs learning rate, per variant" },
      hovermode: "closest",
      xaxis: { title: { text: "learning rate" }, type: "log", exponentformat: "e" },
      yaxis: { title: { text: metric.replace("_", " ") } },
      legend: { orientation: "v", x: 1.02, y: 1 }, margin: { r: 140 },
      shapes: [{ type: "line", xref: "paper", x0: 0, x1: 1, yref: "y", y0: cap, y1: cap,
        line: { color: "#d92d20", width: 1, dash: "dot" } }],
      annotations: [{ xref: "paper", x: 0, xanchor: "left", yref: "y", y: cap, yanchor: "bottom", showarrow: false,
        text: "\u00d7 diverged", font: { color: "#d92d20" } }],
    }), SM.PLOT_CONFIG).then(() => {
      if (el.__wired) return;
      el.__wired = true;
      el.on("plotly_click", (ev) => {
        const p = ev.points && ev.points[0];
        if (!p || !p.customdata) return;
        const ids = String(p.customdata).split(",");
        if (ids.length === 1) location.assign(cfg.root + "runs/" + encodeURIComponent(ids[0]));
        else location.assign(cfg.root + "compare?runs=" + ids.map(encodeURIComponent).join(","));
      });
    });
  }

  function lrTable() {
    // For each LR: a link comparing every variant's runs at that LR.
    const byLr = new Map();
    for (const r of runs) {
      const lr = num((r.config || {}).lr);
      if (lr === null) continue;
      if (!byLr.has(lr)) byLr.set(lr, []);
      byLr.get(lr).push(r.id);
    }
    const lrs = [...byLr.keys()].sort((a, b) => a - b);
    document.getElementById("lr-links").innerHTML = lrs.length ? "Compare all variants at lr "
      + lrs.map((lr) => '<a href="' + cfg.root + "compare?runs=" + byLr.get(lr).slice(0, 24).map(encodeURIComponent).join(",")
        + '">' + SM.fmt(lr) + "</a>").join(" \u00b7 ") : "";
  }

  async function refresh() {
    runs = await SM.allRuns();
    fillPresets();
    lrTable();
    await render();
    SM.setLive(runs.filter((r) => r.status === "running").length + " running");
  }

  document.getElementById("metric").value = q.get("metric") || "final_loss";
  for (const id of ["metric", "preset"]) document.getElementById(id).addEventListener("change", render);
  let first = true;
  SM.poll(async () => {
    await refresh();
    if (first) { first = false; window.__stabmonRendered = performance.now(); }
  }, cfg.sweep_poll_ms || 15000, (e) => { if (first) SM.showError("plot-sweep", e); });
})();
