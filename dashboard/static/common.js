/* stabmon dashboard, shared helpers: the JSON API client (cookie session, 401 -> login),
   decoding of the wire contract's non-finite values, the series-key grammar, client-side
   binning for heatmaps, number formatting, a polite poller and Plotly layout defaults.
   Every page script uses these through the global `SM`. */
(function () {
  "use strict";

  const cfg = JSON.parse(document.getElementById("stabmon-config").textContent);

  class ApiError extends Error {
    constructor(status, detail) {
      super(typeof detail === "string" ? detail : JSON.stringify(detail));
      this.status = status;
    }
  }

  // One GET against /api/v1 with the session cookie. A 401 means the cookie expired or the
  // token was revoked: go to the login form, coming back here afterwards.
  async function api(path, params) {
    const qs = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {})) {
      if (v !== undefined && v !== null && v !== "") qs.set(k, String(v));
    }
    const url = cfg.api + path + (qs.toString() ? "?" + qs : "");
    const resp = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (resp.status === 401) {
      location.assign(cfg.login + "?next=" + encodeURIComponent(location.pathname + location.search));
      throw new ApiError(401, "session expired");
    }
    if (!resp.ok) {
      let detail = resp.statusText;
      try { detail = (await resp.json()).detail; } catch (_) { /* not JSON */ }
      throw new ApiError(resp.status, detail);
    }
    return resp.json();
  }

  // All runs of the project (the API pages them; a dashboard wants them all, up to a cap).
  async function allRuns(filters, cap) {
    const limit = 500;
    const out = [];
    for (let offset = 0; offset < (cap || 5000); offset += limit) {
      const page = await api("/runs", Object.assign({ limit, offset }, filters || {}));
      const items = Array.isArray(page) ? page : page.items || page.runs || [];
      out.push(...items);
      const total = Array.isArray(page) ? null : page.total;
      if (items.length < limit || (total !== null && total !== undefined && out.length >= total)) break;
    }
    return out;
  }

  // The wire encodes NaN/inf as strings; JSON null is treated as NaN too.
  function decode(v) {
    if (typeof v === "number") return v;
    if (v === "inf") return Infinity;
    if (v === "-inf") return -Infinity;
    return NaN;
  }

  const LAYER_KEY = /^layer\.(\d+)\.([A-Za-z0-9_]+)\.([A-Za-z0-9_]+)$/;
  function parseKey(key) {
    const m = LAYER_KEY.exec(key);
    return m ? { key, layer: +m[1], site: m[2], stat: m[3] } : { key, layer: null, site: null, stat: key };
  }

  // A series response -> {key: {steps, values, min, max, nan}} with values decoded. The API
  // answers per key with columns per bucket (step, min, max, mean, last, count, nan_count);
  // `values` is what a line plot draws (the bucket mean), `max` keeps spikes visible and
  // `nan` counts NaNs a mean would hide. Undownsampled answers have min == max == mean.
  function normalizeSeries(resp) {
    const raw = resp.series || resp;
    const out = {};
    const entries = Array.isArray(raw) ? raw.map((s) => [s.key, s]) : Object.entries(raw);
    for (const [key, s] of entries) {
      if (!s || typeof s !== "object") continue;
      const steps = s.step || s.steps;
      if (!Array.isArray(steps)) continue;
      const vals = s.mean || s.values || s.last || s.value || [];
      const rec = { steps: steps.slice(), values: vals.map(decode) };
      rec.min = Array.isArray(s.min) ? s.min.map(decode) : rec.values.slice();
      rec.max = Array.isArray(s.max) ? s.max.map(decode) : rec.values.slice();
      rec.nan = Array.isArray(s.nan_count) ? s.nan_count.slice() : rec.values.map((v) => (Number.isNaN(v) ? 1 : 0));
      out[key] = rec;
    }
    return out;
  }

  // True when bucket i of a normalized series held a NaN or an infinity.
  function nonFiniteAt(s, i) {
    return s.nan[i] > 0 || !Number.isFinite(s.max[i]) || !Number.isFinite(s.values[i]);
  }

  // GET the series endpoint in chunks of keys (URLs stay short, the API's per-request key
  // limit is respected) and merge the answers.
  async function fetchSeries(runId, keys, params) {
    const chunk = cfg.keys_per_request || 64;
    const parts = [];
    for (let i = 0; i < keys.length; i += chunk) {
      const ks = keys.slice(i, i + chunk).join(",");
      parts.push(api("/runs/" + encodeURIComponent(runId) + "/series", Object.assign({ keys: ks }, params)));
    }
    const merged = {};
    for (const r of await Promise.all(parts)) Object.assign(merged, normalizeSeries(r));
    return merged;
  }

  // Append `add` (normalized series) to `into`, skipping steps already present.
  function appendSeries(into, add) {
    let grew = false;
    for (const [key, s] of Object.entries(add)) {
      const cur = into[key];
      if (!cur) { into[key] = s; grew = grew || s.steps.length > 0; continue; }
      const last = cur.steps.length ? cur.steps[cur.steps.length - 1] : -Infinity;
      for (let i = 0; i < s.steps.length; i++) {
        if (s.steps[i] <= last) continue;
        cur.steps.push(s.steps[i]);
        cur.values.push(s.values[i]);
        cur.min.push(s.min[i]);
        cur.max.push(s.max[i]);
        cur.nan.push(s.nan[i]);
        grew = true;
      }
    }
    return grew;
  }

  function lastStep(seriesMap) {
    let m = -1;
    for (const s of Object.values(seriesMap)) if (s.steps.length) m = Math.max(m, s.steps[s.steps.length - 1]);
    return m;
  }

  // Finite values for plotting: Plotly cannot draw NaN/inf, so they become gaps (null);
  // callers mark them separately.
  function finiteOrNull(xs) { return xs.map((x) => (Number.isFinite(x) ? x : null)); }

  // Bin several series onto one step grid of `nbins` columns (the heatmap's x axis), keeping
  // each bin's maximum: growth and spikes must stay visible whatever the zoom. +inf wins a
  // bin (it is the most alarming value); NaN only fills a bin nothing else filled.
  function binMax(seriesList, nbins) {
    let lo = Infinity, hi = -Infinity;
    for (const s of seriesList) {
      if (s && s.steps.length) { lo = Math.min(lo, s.steps[0]); hi = Math.max(hi, s.steps[s.steps.length - 1]); }
    }
    if (!Number.isFinite(lo)) return { x: [], rows: seriesList.map(() => []) };
    const span = hi - lo + 1;
    const n = Math.max(1, Math.min(nbins, span));
    const width = span / n;
    const x = Array.from({ length: n }, (_, j) => Math.round(lo + (j + 0.5) * width - 0.5));
    const rows = seriesList.map((s) => {
      const row = new Array(n).fill(null);
      if (!s) return row;
      const vals = s.max || s.values;
      for (let i = 0; i < s.steps.length; i++) {
        const j = Math.min(n - 1, Math.floor((s.steps[i] - lo) / width));
        const v = vals[i];
        if (Number.isNaN(v)) { if (row[j] === null) row[j] = NaN; continue; }
        if (row[j] === null || Number.isNaN(row[j]) || v > row[j]) row[j] = v;
      }
      return row;
    });
    return { x, rows };
  }

  function fmt(x, digits) {
    if (x === null || x === undefined) return "\u2013";
    if (typeof x === "string") {
      // Wire strings ("nan", "inf") decode; a config value such as "3e-4" parses; other text shows as is.
      if (x === "nan" || x === "inf" || x === "-inf") x = decode(x);
      else {
        const n = x.trim() === "" ? NaN : Number(x);
        if (Number.isNaN(n)) return x;
        x = n;
      }
    }
    if (Number.isNaN(x)) return "NaN";
    if (!Number.isFinite(x)) return x > 0 ? "inf" : "-inf";
    const a = Math.abs(x);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return x.toExponential(2);
    return String(Number(x.toFixed(digits === undefined ? (a < 1 ? 4 : 3) : digits)));
  }

  function esc(s) {
    return String(s === null || s === undefined ? "" : s).replace(/[&<>"']/g, (c) => (
      { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  }

  function ago(iso) {
    const t = Date.parse(iso);
    if (Number.isNaN(t)) return "";
    const s = Math.max(0, (Date.now() - t) / 1000);
    if (s < 90) return Math.round(s) + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    if (s < 129600) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " d ago";
  }

  // Run `fn` now and then every `ms`, never overlapping, paused while the tab is hidden,
  // backing off (up to 60 s) while the collector errors. `fn` returns false to stop.
  function poll(fn, ms, onError) {
    let delay = ms, timer = null, stopped = false;
    async function tick() {
      timer = null;
      if (stopped) return;
      if (document.hidden) { timer = setTimeout(tick, ms); return; }
      try {
        const more = await fn();
        delay = ms;
        if (more === false) { stopped = true; return; }
      } catch (e) {
        if (e && e.status === 401) { stopped = true; return; }
        delay = Math.min(60000, delay * 2);
        if (onError) onError(e);
      }
      timer = setTimeout(tick, delay);
    }
    tick();
    return { stop() { stopped = true; if (timer) clearTimeout(timer); } };
  }

  function setLive(text) {
    const el = document.getElementById("live");
    if (el) el.textContent = text;
  }

  const COLORS = ["#2f6fed", "#e8590c", "#2b8a3e", "#c2255c", "#7048e8", "#0c8599", "#e67700", "#5c7cfa",
    "#a61e4d", "#087f5b", "#862e9c", "#495057"];
  const VARIANT_COLORS = { baseline: "#495057", qk_norm: "#2f6fed", qk_fc_norm: "#2b8a3e",
    qkv_norm: "#e8590c", qk_norm_cap: "#c2255c" };
  function variantColor(v, i) { return VARIANT_COLORS[v] || COLORS[(i || 0) % COLORS.length]; }

  // Plotly layout defaults: titled axes, compact margins, legend that does not eat the plot.
  function layout(extra) {
    const base = {
      margin: { l: 64, r: 18, t: 36, b: 46 },
      font: { family: "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size: 12, color: "#1d2433" },
      paper_bgcolor: "#ffffff", plot_bgcolor: "#ffffff",
      hovermode: "x unified",
      // Below the x-axis title, not on it.
      legend: { orientation: "h", x: 0, y: -0.3, yanchor: "top" },
      xaxis: { title: { text: "step" }, gridcolor: "#eef0f3", zeroline: false },
      yaxis: { gridcolor: "#eef0f3", zeroline: false },
      colorway: COLORS,
    };
    return deepMerge(base, extra || {});
  }
  function deepMerge(a, b) {
    const out = Array.isArray(a) ? a.slice() : Object.assign({}, a);
    for (const [k, v] of Object.entries(b)) {
      out[k] = v && typeof v === "object" && !Array.isArray(v) && a[k] && typeof a[k] === "object"
        ? deepMerge(a[k], v) : v;
    }
    return out;
  }
  const PLOT_CONFIG = { responsive: true, displaylogo: false, modeBarButtonsToRemove: ["lasso2d", "select2d"] };

  function showError(el, e) {
    if (typeof el === "string") el = document.getElementById(el);
    if (el) el.innerHTML = '<div class="empty error">' + esc(e && e.message ? e.message : e) + "</div>";
  }

  window.SM = {
    cfg, api, allRuns, decode, parseKey, normalizeSeries, fetchSeries, appendSeries, lastStep,
    finiteOrNull, nonFiniteAt, binMax, fmt, esc, ago, poll, setLive, layout, PLOT_CONFIG, COLORS, variantColor,
    showError, ApiError,
  };
})();
