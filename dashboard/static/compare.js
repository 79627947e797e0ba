/* The compare page (/compare?runs=a,b,c): several runs overlaid — loss, the maximum attention
   logit over layers, the maximum output norm over layers at a chosen site, and grad norm —
   plus a table of their configs and outcomes. Typical use: the five norm variants at one
   learning rate, to see which one's norms and logits run away first. */
(function () {
  "use strict";
  const cfg = SM.cfg;
  const MAX_POINTS = cfg.compare_max_points || 600;
  const SITES = ["qkv", "q", "k", "v", "proj", "fc1", "fc2"];
  const ids = (new URLSearchParams(location.search).get("runs") || "").split(",").map((s) => s.trim()).filter(Boolean);
  const runs = []; // {run, series, color}

  // Per-step maximum over several series (e.g. all layers of one site): the run's worst layer.
  function maxOver(list) {
    const m = new Map();
    for (const s of list) {
      if (!s) continue;
      const vals = s.max || s.values;
      for (let i = 0; i < s.steps.length; i++) {
        const v = vals[i];
        if (!Number.isFinite(v)) continue;
        const cur = m.get(s.steps[i]);
        if (cur === undefined || v > cur) m.set(s.steps[i], v);
      }
    }
    const steps = [...m.keys()].sort((a, b) => a - b);
    return { steps, values: steps.map((k) => m.get(k)) };
  }

  // The legend names the run; variant and LR are in the table above and in the hover text.
  function label(r) { return r.name; }
  function detail(r) {
    const c = r.config || {};
    return [c.variant, c.lr !== undefined ? "lr " + SM.fmt(c.lr) : null].filter((x) => x !== undefined && x !== null).join(", ");
  }

  async function loadRun(id, i) {
    const base = "/runs/" + encodeURIComponent(id);
    const [run, keysResp] = await Promise.all([SM.api(base), SM.api(base + "/keys")]);
    const keys = (Array.isArray(keysResp) ? keysResp : keysResp.keys || keysResp.items || [])
      .map((k) => (typeof k === "string" ? k : k.key));
    const wanted = keys.filter((k) => {
      const p = SM.parseKey(k);
      if (p.layer === null) return ["loss", "val_loss", "grad_norm"].includes(k);
      return (p.site === "attn" && p.stat === "logit_max") || (SITES.includes(p.site) && p.stat === "l2_mean");
    });
    const series = wanted.length ? await SM.fetchSeries(id, wanted, { max_points: MAX_POINTS }) : {};
    return { run, series, keys: wanted, color: SM.COLORS[i % SM.COLORS.length] };
  }

  function byPattern(r, site, stat) {
    return r.keys.filter((k) => { const p = SM.parseKey(k); return p.site === site && p.stat === stat; }).map((k) => r.series[k]);
  }

  function lineTraces(pick, logy) {
    return runs.map((r) => {
      const s = pick(r);
      if (!s || !s.steps.length) return null;
      return { name: label(r.run), x: s.steps, y: SM.finiteOrNull(s.values).map((v) => (logy && v !== null && v <= 0 ? null : v)),
        mode: "lines", line: { color: r.color, width: 1.5 },
        hovertemplate: "%{y:.4g}<extra>" + SM.esc(label(r.run)) + (detail(r.run) ? " (" + SM.esc(detail(r.run)) + ")" : "") + "</extra>" };
    }).filter(Boolean);
  }

  // Each diverged run's divergence step, as a dashed line in the run's color.
  function divergenceLines() {
    return runs.filter((r) => (r.run.summary || {}).diverged_at !== undefined && r.run.summary.diverged_at !== null)
      .map((r) => ({ type: "line", xref: "x", yref: "paper", x0: r.run.summary.diverged_at, x1: r.run.summary.diverged_at,
        y0: 0, y1: 1, line: { color: r.color, width: 1.5, dash: "dash" } }));
  }

  function draw(id, traces, title, ytitle, logy, empty) {
    const el = document.getElementById(id);
    if (!traces.length) { el.innerHTML = '<div class="empty">' + SM.esc(empty) + "</div>"; return Promise.resolve(); }
    return Plotly.react(el, traces, SM.layout({ title: { text: title }, shapes: divergenceLines(),
      yaxis: { title: { text: ytitle }, type: logy ? "log" : "linear" } }), SM.PLOT_CONFIG);
  }

  function drawNorms() {
    const site = document.getElementById("site").value;
    return draw("plot-norm", lineTraces((r) => maxOver(byPattern(r, site, "l2_mean")), true),
      "Max " + site.toUpperCase() + " output norm over layers", "max over layers of l2_mean", true,
      "No " + site + " norms in these runs.");
  }

  function renderTable() {
    document.getElementById("runs-table").innerHTML = '<table class="data"><thead><tr><th>run</th><th>variant</th>'
      + '<th class="num">lr</th><th>status</th><th class="num">step</th><th class="num">final loss</th>'
      + '<th class="num">min loss</th><th class="num">diverged at</th><th class="num">open alerts</th></tr></thead><tbody>'
      + runs.map((r) => {
        const c = r.run.config || {}, s = r.run.summary || {};
        return '<tr><td><span style="color:' + r.color + '">\u25A0</span> <a href="' + cfg.root + "runs/"
          + encodeURIComponent(r.run.id) + '">' + SM.esc(r.run.name) + "</a></td><td>" + SM.esc(c.variant ?? "")
          + '</td><td class="num">' + (c.lr !== undefined ? SM.fmt(c.lr) : "") + '</td><td><span class="badge '
          + SM.esc(r.run.status) + '">' + SM.esc(r.run.status) + '</span></td><td class="num">' + (r.run.last_step ?? "\u2013")
          + '</td><td class="num">' + SM.fmt(s.final_loss) + '</td><td class="num">' + SM.fmt(s.min_loss)
          + '</td><td class="num">' + SM.esc(s.diverged_at ?? "") + '</td><td class="num">' + (r.run.open_alerts || 0) + "</td></tr>";
      }).join("") + "</tbody></table>";
  }

  async function main() {
    if (!ids.length) {
      document.getElementById("compare-body").innerHTML =
        '<div class="empty">No runs chosen. Select runs on the <a href="' + cfg.root + 'runs">runs list</a> and press Compare, '
        + "or open <code>/compare?runs=ID1,ID2</code>.</div>";
      return;
    }
    try {
      const loaded = await Promise.all(ids.slice(0, 24).map(loadRun));
      // Color by variant when the runs are one per variant (the usual comparison).
      const variants = loaded.map((r) => (r.run.config || {}).variant);
      if (variants.every((v) => v) && new Set(variants).size === variants.length) {
        loaded.forEach((r, i) => { r.color = SM.variantColor(variants[i], i); });
      }
      runs.push(...loaded);
    } catch (e) {
      SM.showError("compare-body", e);
      return;
    }
    const sites = SITES.filter((site) => runs.some((r) => byPattern(r, site, "l2_mean").length));
    const sel = document.getElementById("site");
    sel.innerHTML = sites.map((s) => '<option value="' + s + '">' + s + "</option>").join("") || '<option value="fc2">fc2</option>';
    if (sites.includes("fc2")) sel.value = "fc2";
    sel.addEventListener("change", drawNorms);
    renderTable();
    await Promise.all([
      draw("plot-loss", lineTraces((r) => r.series.loss, true), "Loss", "loss", true, "No loss recorded."),
      draw("plot-logit", lineTraces((r) => maxOver(byPattern(r, "attn", "logit_max")), true),
        "Max attention logit over layers", "max logit", true, "No attention-logit statistics recorded."),
      drawNorms(),
      draw("plot-grad", lineTraces((r) => r.series.grad_norm, true), "Gradient norm", "grad norm", true, "No grad norm recorded."),
    ]);
    window.__stabmonRendered = performance.now();
    SM.setLive(runs.length + " runs");
  }

  main();
})();
