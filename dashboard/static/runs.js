/* The runs list: every run of the project with its variant, learning rate, status, current
   step, latest loss and open alerts (colored by the worst severity), sortable by any column
   and filterable by text, status and variant (the filters live in the URL, so a filtered
   view can be shared). Polls the API while the tab is visible; selected runs open the
   compare page. */
(function () {
  "use strict";
  const cfg = SM.cfg;
  const COLS = [
    { id: "name", label: "name", get: (r) => r.name },
    { id: "project", label: "project", get: (r) => r.project },
    { id: "variant", label: "variant", get: (r) => (r.config || {}).variant ?? "" },
    { id: "lr", label: "lr", num: true, get: (r) => num((r.config || {}).lr) },
    { id: "status", label: "status", get: (r) => r.status },
    { id: "step", label: "step", num: true, get: (r) => r.last_step ?? -1 },
    { id: "loss", label: "latest loss", num: true, get: (r) => latestLoss(r) },
    { id: "alerts", label: "open alerts", num: true, get: (r) => alertRank(r) },
    { id: "updated", label: "updated", get: (r) => r.updated_at },
  ];
  const state = { runs: [], latest: {}, severity: {}, selected: new Set(), sort: "updated", desc: true };
  const q = new URLSearchParams(location.search);
  if (q.get("sort")) state.sort = q.get("sort");
  if (q.get("asc") === "1") state.desc = false;

  function num(v) { const x = typeof v === "string" ? Number(v) : v; return typeof x === "number" && !Number.isNaN(x) ? x : null; }

  // The loss shown: the latest streamed value while it is known, else the run's summary.
  function latestLoss(r) {
    const l = state.latest[r.id];
    if (l !== undefined) return l;
    const s = r.summary || {};
    return s.final_loss !== undefined ? SM.decode(s.final_loss) : null;
  }
  // Sort key for alerts: critical before warning, then by count.
  function alertRank(r) {
    const sev = state.severity[r.id];
    return (r.open_alerts || 0) + (sev === "critical" ? 1e6 : sev === "warning" ? 1e3 : 0);
  }

  function filtered() {
    const text = document.getElementById("f-text").value.trim().toLowerCase();
    const status = document.getElementById("f-status").value;
    const variant = document.getElementById("f-variant").value;
    return state.runs.filter((r) => {
      if (status && r.status !== status) return false;
      if (variant && String((r.config || {}).variant ?? "") !== variant) return false;
      if (!text) return true;
      const hay = [r.id, r.name, r.project, (r.config || {}).variant, (r.config || {}).preset].join(" ").toLowerCase();
      return hay.includes(text);
    });
  }

  function sorted(rows) {
    const col = COLS.find((c) => c.id === state.sort) || COLS[COLS.length - 1];
    const dir = state.desc ? -1 : 1;
    return rows.slice().sort((a, b) => {
      const x = col.get(a), y = col.get(b);
      // Missing values sort last in either direction; NaN (a diverged loss) sorts as largest.
      const xm = x === null || x === undefined || x === "", ym = y === null || y === undefined || y === "";
      if (xm || ym) return xm === ym ? 0 : xm ? 1 : -1;
      if (col.num) {
        const xv = Number.isNaN(x) ? Infinity : x, yv = Number.isNaN(y) ? Infinity : y;
        return xv === yv ? 0 : (xv < yv ? -1 : 1) * dir;
      }
      return String(x).localeCompare(String(y), undefined, { numeric: true }) * dir;
    });
  }

  function alertCell(r) {
    const n = r.open_alerts || 0;
    if (!n) return '<span class="badge none">0</span>';
    const sev = state.severity[r.id] || "warning";
    return '<span class="badge ' + sev + '" title="' + sev + '">' + n + " " + sev + "</span>";
  }

  function render() {
    const rows = sorted(filtered());
    const head = '<tr><th><input type="checkbox" id="sel-all" title="select all shown"></th>' + COLS.map((c) =>
      '<th class="sortable' + (c.num ? " num" : "") + (c.id === state.sort ? (state.desc ? " sorted-desc" : " sorted-asc") : "")
      + '" data-col="' + c.id + '">' + c.label + "</th>").join("") + "</tr>";
    const body = rows.map((r) => {
      const c = r.config || {};
      return '<tr data-run="' + SM.esc(r.id) + '">'
        + '<td><input type="checkbox" class="sel" value="' + SM.esc(r.id) + '"' + (state.selected.has(r.id) ? " checked" : "") + "></td>"
        + '<td><a href="' + cfg.root + "runs/" + encodeURIComponent(r.id) + '">' + SM.esc(r.name) + "</a></td>"
        + "<td>" + SM.esc(r.project) + "</td><td>" + SM.esc(c.variant ?? "") + "</td>"
        + '<td class="num">' + (c.lr !== undefined ? SM.fmt(num(c.lr)) : "") + "</td>"
        + '<td><span class="badge ' + SM.esc(r.status) + '">' + SM.esc(r.status) + "</span></td>"
        + '<td class="num">' + (r.last_step ?? "\u2013") + "</td>"
        + '<td class="num">' + SM.fmt(latestLoss(r)) + "</td>"
        + '<td class="num">' + alertCell(r) + "</td>"
        + '<td title="' + SM.esc(r.updated_at) + '">' + SM.esc(SM.ago(r.updated_at)) + "</td></tr>";
    }).join("");
    document.getElementById("runs").innerHTML = rows.length
      ? '<table class="data" id="runs-table"><thead>' + head + "</thead><tbody>" + body + "</tbody></table>"
      : '<div class="empty">' + (state.runs.length ? "No run matches the filters." : "No runs yet: start a training job with monitoring on.") + "</div>";
    document.getElementById("count").textContent = rows.length + " of " + state.runs.length + " runs";
    updateCompare();
  }

  function updateCompare() {
    const btn = document.getElementById("compare");
    btn.disabled = state.selected.size < 1;
    btn.textContent = "Compare" + (state.selected.size ? " (" + state.selected.size + ")" : "");
  }

  function fillVariants() {
    const sel = document.getElementById("f-variant");
    const cur = sel.value || q.get("variant") || "";
    const variants = [...new Set(state.runs.map((r) => (r.config || {}).variant).filter((v) => v !== undefined && v !== null))].sort();
    sel.innerHTML = '<option value="">all variants</option>' + variants.map((v) =>
      '<option value="' + SM.esc(v) + '"' + (String(v) === cur ? " selected" : "") + ">" + SM.esc(v) + "</option>").join("");
  }

  function syncUrl() {
    const p = new URLSearchParams();
    const text = document.getElementById("f-text").value.trim();
    const status = document.getElementById("f-status").value;
    const variant = document.getElementById("f-variant").value;
    if (text) p.set("q", text);
    if (status) p.set("status", status);
    if (variant) p.set("variant", variant);
    if (state.sort !== "updated") p.set("sort", state.sort);
    if (!state.desc) p.set("asc", "1");
    history.replaceState(null, "", location.pathname + (p.toString() ? "?" + p : ""));
  }

  // Latest loss of running runs and the worst open-alert severity of runs with open alerts;
  // bounded so a project with thousands of runs does not fan out thousands of requests.
  async function enrich() {
    const running = state.runs.filter((r) => r.status === "running").slice(0, 50);
    const alerting = state.runs.filter((r) => r.open_alerts > 0).slice(0, 50);
    await Promise.all([
      ...running.map(async (r) => {
        try {
          const lat = await SM.api("/runs/" + encodeURIComponent(r.id) + "/latest", { keys: "loss" });
          const v = pickLatest(lat, "loss");
          if (v !== undefined) state.latest[r.id] = v;
        } catch (e) { /* a run deleted meanwhile: keep the row as it is */ }
      }),
      ...alerting.map(async (r) => {
        try {
          const al = await SM.api("/runs/" + encodeURIComponent(r.id) + "/alerts", { status: "open" });
          const open = (Array.isArray(al) ? al : al.items || []).filter((a) => a.status === "open");
          state.severity[r.id] = open.some((a) => a.severity === "critical") ? "critical" : "warning";
        } catch (e) { /* idem */ }
      }),
    ]);
  }

  function pickLatest(lat, key) {
    const v = lat && (lat.values ? lat.values[key] : lat[key]);
    if (v === undefined || v === null) return undefined;
    return SM.decode(typeof v === "object" ? v.value : v);
  }

  async function refresh() {
    state.runs = await SM.allRuns();
    await enrich();
    fillVariants();
    render();
    window.__stabmonUpdates = (window.__stabmonUpdates || 0) + 1;
    const n = state.runs.filter((r) => r.status === "running").length;
    SM.setLive(n ? "live \u00b7 " + n + " running" : "up to date");
  }

  function wire() {
    document.getElementById("f-text").value = q.get("q") || "";
    document.getElementById("f-status").value = q.get("status") || "";
    for (const id of ["f-text", "f-status", "f-variant"]) {
      document.getElementById(id).addEventListener("input", () => { syncUrl(); render(); });
    }
    document.getElementById("runs").addEventListener("click", (ev) => {
      const th = ev.target.closest("th.sortable");
      if (th) {
        const col = th.dataset.col;
        if (state.sort === col) state.desc = !state.desc; else { state.sort = col; state.desc = col === "updated" || col === "alerts"; }
        syncUrl(); render(); return;
      }
      if (ev.target.id === "sel-all") {
        for (const r of filtered()) { if (ev.target.checked) state.selected.add(r.id); else state.selected.delete(r.id); }
        render(); return;
      }
      if (ev.target.classList.contains("sel")) {
        if (ev.target.checked) state.selected.add(ev.target.value); else state.selected.delete(ev.target.value);
        updateCompare();
      }
    });
    document.getElementById("compare").addEventListener("click", () => {
      location.assign(cfg.root + "compare?runs=" + [...state.selected].map(encodeURIComponent).join(","));
    });
  }

  wire();
  let first = true;
  SM.poll(async () => {
    await refresh();
    if (first) { first = false; window.__stabmonRendered = performance.now(); }
  }, cfg.poll_ms || 5000, (e) => { SM.setLive("collector unreachable: retrying"); if (first) SM.showError("runs", e); });
})();
