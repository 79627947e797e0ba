"""The dashboard in a real headless Chromium against a real collector with ingested data:
the runs list, a diverging run's page (loss with alert markers and the divergence step, one
norm heatmap per site, logits per layer against the detector's thresholds, entropy, grad
norm, LR, the alert table), a live run gaining points without a reload, the compare page
and the LR sweep. Plots are checked through the ``.data``/``.layout`` of Plotly's graph divs;
screenshots land in ``test-artifacts/dashboard/``. No page may log a JavaScript error.
"""

from __future__ import annotations

import time

import pytest

from bench.synthetic_runs import RunShape
from tests.dashboard.conftest import SWEEP_LRS, VARIANTS, create_run, ingest

pytestmark = [pytest.mark.integration, pytest.mark.browser]


def wait_js(page, expr: str, timeout: float = 20.0):  # noqa: ANN001, ANN201
    """Poll ``expr`` until truthy. (Playwright's wait_for_function evaluates strings with
    eval, which the pages' Content-Security-Policy forbids, as it should.)"""
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(expr)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {expr}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def signed_in(browser, seeded):  # noqa: ANN001, ANN201
    """One browser context for the module, signed in the way a URL printed by `stabmon demo`
    does (its cache then holds Plotly's bundle, as a returning user's browser would)."""
    ctx = browser.new_context(viewport={"width": 1440, "height": 900})
    pg = ctx.new_page()
    pg.goto(f"{seeded.collector.url}/runs?token={seeded.collector.token}")
    assert pg.url == f"{seeded.collector.url}/runs"
    pg.close()
    yield ctx
    ctx.close()


@pytest.fixture()
def page(signed_in):  # noqa: ANN001, ANN201
    pg = signed_in.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    pg.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    yield pg
    pg.close()
    assert not errors, errors


def open_page(page, url: str) -> None:  # noqa: ANN001
    page.goto(url)
    wait_js(page, "window.__stabmonRendered !== undefined || window.__stabmonError !== undefined")
    assert page.evaluate("window.__stabmonError") is None


def test_runs_list(page, seeded, artifacts) -> None:  # noqa: ANN001
    open_page(page, seeded.collector.url + "/runs")
    rows = page.locator("#runs-table tbody tr")
    assert rows.count() >= 2 + len(VARIANTS) * len(SWEEP_LRS)
    div = page.locator(f'#runs-table tr[data-run="{seeded.diverging}"]')
    assert "running" in div.inner_text()
    assert "critical" in div.locator(".badge.critical").inner_text()
    assert "NaN" in div.inner_text()  # the latest loss of the diverged run
    healthy = page.locator(f'#runs-table tr[data-run="{seeded.healthy}"]')
    assert "qk_norm" in healthy.inner_text() and "finished" in healthy.inner_text()
    # Sort by learning rate: ascending first, a second click descending.
    page.click('th[data-col="lr"]')
    assert "\t0.001\t" in page.locator("#runs-table tbody tr").first.inner_text()
    assert "sort=lr&asc=1" in page.url
    page.click('th[data-col="lr"]')
    assert "\t0.01\t" in page.locator("#runs-table tbody tr").first.inner_text()
    # Filter by variant and status.
    page.select_option("#f-variant", "qk_fc_norm")
    assert page.locator("#runs-table tbody tr").count() == len(SWEEP_LRS)
    page.select_option("#f-status", "diverged")
    assert "No run matches" in page.inner_text("#runs")
    page.select_option("#f-variant", "")
    assert page.locator("#runs-table tbody tr").count() == 1
    assert "status=diverged" in page.url
    page.select_option("#f-status", "")
    page.screenshot(path=str(artifacts / "runs.png"), full_page=True)
    # Select two runs and compare them.
    page.check(f'#runs-table input.sel[value="{seeded.healthy}"]')
    page.check(f'#runs-table input.sel[value="{seeded.diverging}"]')
    assert page.inner_text("#compare") == "Compare (2)"
    page.click("#compare")
    page.wait_for_url(f"{seeded.collector.url}/compare?runs={seeded.healthy},{seeded.diverging}")


def test_run_page_of_a_diverging_run(page, seeded, artifacts) -> None:  # noqa: ANN001
    open_page(page, f"{seeded.collector.url}/runs/{seeded.diverging}")
    layers = seeded.diverging_shape.layers
    loss = page.evaluate(
        "(() => { const el = document.getElementById('plot-loss');"
        " return {names: el.data.map((t) => t.name), n: el.data[0].x.length,"
        " ann: (el.layout.annotations || []).map((a) => a.text)}; })()"
    )
    assert loss["names"][0] == "loss" and loss["n"] >= 250
    assert "non-finite loss" in loss["names"]
    assert "critical alerts" in loss["names"]
    assert "diverged at step 250" in loss["ann"]

    heat = page.evaluate(
        "[...document.querySelectorAll('#heatmaps [data-site]')].map((el) => ({site: el.dataset.site,"
        " type: el.data[0].type, y: el.data[0].y, cols: el.data[0].z[0].length,"
        " zmax: Math.max(...el.data[0].z.flat().filter((v) => v !== null))}))"
    )
    assert [h["site"] for h in heat] == ["qkv", "proj", "fc1", "fc2"]
    for h in heat:
        assert h["type"] == "heatmap" and h["y"] == list(range(layers)) and h["cols"] >= 250
    # log10 of the diverging norms: far above the healthy ~1-2.
    assert heat[0]["zmax"] > 4

    logits = page.evaluate(
        "(() => { const el = document.getElementById('plot-logits');"
        " return {names: el.data.map((t) => t.name), type: el.layout.yaxis.type,"
        " lines: el.layout.shapes.map((s) => s.y0),"
        " peak: Math.max(...el.data.flatMap((t) => t.y.filter((v) => v !== null)))}; })()"
    )
    assert logits["names"] == [f"layer {i}" for i in range(layers)]
    assert logits["type"] == "log"
    assert {300, 3000, 10000} <= set(logits["lines"])
    assert logits["peak"] > 1e4
    for plot in ("plot-entropy", "plot-grad", "plot-lr"):
        assert page.evaluate(f"document.getElementById('{plot}').data.length") >= 1, plot

    alerts = page.inner_text("#alerts-table")
    for rule in ("logit_max", "norm_growth", "non_finite"):
        assert rule in alerts
    page.click("#alerts-table details summary >> nth=0")
    assert "severity" in page.inner_text("#alerts-table details[open] pre")
    page.screenshot(path=str(artifacts / "run-diverging.png"), full_page=True)


def test_live_points_appear_without_reload(page, seeded, artifacts) -> None:  # noqa: ANN001
    shape = RunShape(steps=400, layers=3, diverge_at=None, seed=7)
    with seeded.collector.client() as c:
        rid = create_run(c, "live-qkv_norm", {"variant": "qkv_norm", "lr": 3e-3, "preset": "tiny"})
        # Opened before the job sent anything: empty plots, then the first points arrive.
        open_page(page, f"{seeded.collector.url}/runs/{rid}")
        assert "No loss recorded yet" in page.inner_text("#plot-loss")
        page.evaluate("window.__marker = 'same page'")
        ingest(c, rid, shape, 0, 120)
        last_x = (
            "(() => { const el = document.getElementById('plot-loss');"
            " if (!el.data) return null; const x = el.data[0].x; return x[x.length - 1]; })()"
        )
        wait_js(page, f"{last_x} === 119", timeout=30)
        assert "live" in page.inner_text("#live")
        ingest(c, rid, shape, 120, 180)
        wait_js(page, f"{last_x} === 179", timeout=30)
    # The same document (no reload), every plot extended.
    assert page.evaluate("window.__marker") == "same page"
    heat_last = page.evaluate(
        "(() => { const x = document.getElementById('heat-fc2').data[0].x; return x[x.length-1]; })()"
    )
    assert heat_last >= 170
    assert "step 179" in page.inner_text("#live")
    page.screenshot(path=str(artifacts / "run-live.png"), full_page=True)


def test_compare_five_variants_at_one_lr(page, seeded, artifacts) -> None:  # noqa: ANN001
    ids = [seeded.sweep[(v, 1e-2)] for v in VARIANTS]
    open_page(page, f"{seeded.collector.url}/compare?runs={','.join(ids)}")
    names = page.evaluate("document.getElementById('plot-loss').data.map((t) => t.name)")
    assert len(names) == len(VARIANTS)
    assert all(any(v in n for n in names) for v in VARIANTS)
    for plot in ("plot-logit", "plot-norm", "plot-grad"):
        assert page.evaluate(f"document.getElementById('{plot}').data.length") == len(VARIANTS), plot
    page.select_option("#site", "qkv")
    wait_js(page, "document.getElementById('plot-norm').layout.title.text.includes('QKV')")
    assert page.locator("#runs-table tbody tr").count() == len(VARIANTS)
    page.screenshot(path=str(artifacts / "compare.png"), full_page=True)


def test_lr_sweep(page, seeded, artifacts) -> None:  # noqa: ANN001
    open_page(page, f"{seeded.collector.url}/sweep?preset=sweep")
    traces = page.evaluate(
        "document.getElementById('plot-sweep').data.map((t) => ({name: t.name, x: t.x, y: t.y,"
        " symbol: t.marker && t.marker.symbol}))"
    )
    lines = {t["name"]: t for t in traces if t["symbol"] is None}
    assert set(lines) == set(VARIANTS)
    assert lines["qk_norm"]["x"] == list(SWEEP_LRS)
    # The baseline diverged at the highest LR: no line point there, a cross instead.
    assert lines["baseline"]["x"] == list(SWEEP_LRS[:-1])
    crosses = [t for t in traces if t["symbol"] == "x-thin"]
    assert len(crosses) == 1 and crosses[0]["name"] == "baseline diverged" and crosses[0]["x"] == [1e-2]
    # The stopped seed is an open circle at its loss, and the qk_norm line ignores it.
    circles = [t for t in traces if t["symbol"] == "circle-open"]
    assert [(t["name"], t["x"], t["y"]) for t in circles] == [("qk_norm stopped", [1e-2], [5.0])]
    assert max(lines["qk_norm"]["y"]) < 4
    assert page.evaluate("document.getElementById('plot-sweep').layout.xaxis.type") == "log"
    page.select_option("#metric", "min_loss")
    wait_js(page, "document.getElementById('plot-sweep').layout.yaxis.title.text === 'min loss'")
    page.screenshot(path=str(artifacts / "sweep.png"), full_page=True)


def test_login_form_in_the_browser(browser, seeded, artifacts) -> None:  # noqa: ANN001
    """A bad token shows the form with a message and no data; signing in with a good one
    lands on the page first asked for, and the session survives a reload."""
    ctx = browser.new_context(viewport={"width": 1000, "height": 640})
    try:
        page = ctx.new_page()
        page.goto(f"{seeded.collector.url}/runs/{seeded.healthy}?token=stm_wrong")
        assert "not valid" in page.inner_text("#login-msg")
        assert page.locator("#runs-table, .js-plotly-plot").count() == 0
        page.screenshot(path=str(artifacts / "login.png"))
        assert not any(c["name"] == "stabmon_token" for c in ctx.cookies())
        page.fill('input[name="token"]', seeded.collector.token)
        page.click('button[type="submit"]')
        page.wait_for_url(f"{seeded.collector.url}/runs/{seeded.healthy}")
        cookie = next(c for c in ctx.cookies() if c["name"] == "stabmon_token")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert page.evaluate("document.cookie") == ""  # invisible to scripts
        page.reload()
        wait_js(page, "window.__stabmonRendered !== undefined")
        page.click("text=sign out")
        page.wait_for_url(f"{seeded.collector.url}/login")
        assert not any(c["name"] == "stabmon_token" for c in ctx.cookies())
    finally:
        ctx.close()


def test_run_page_of_a_healthy_run_with_separate_projections(page, seeded, artifacts) -> None:  # noqa: ANN001
    open_page(page, f"{seeded.collector.url}/runs/{seeded.healthy}")
    sites = page.evaluate(
        "[...document.querySelectorAll('#heatmaps [data-site]')].map((el) => el.dataset.site)"
    )
    assert sites == ["q", "k", "v", "proj", "fc1", "fc2"]
    logits = page.evaluate(
        "(() => { const el = document.getElementById('plot-logits');"
        " return {texts: el.layout.annotations.map((a) => a.text), top: el.layout.yaxis.range[1]}; })()"
    )
    # Far below the thresholds, which stay on the plot; nothing is off scale.
    assert any(t.startswith("critical") for t in logits["texts"])
    assert not any("off scale" in t for t in logits["texts"])
    assert logits["top"] >= 4  # log10: the axis reaches past the Wortsman level (1e4)
    assert "No alerts for this run." in page.inner_text("#alerts")
    assert "finished" in page.inner_text("#run-title")
    assert page.inner_text("#live") == "finished"
    page.screenshot(path=str(artifacts / "run-healthy.png"), full_page=True)


def test_shared_helpers_in_the_page(page, seeded) -> None:  # noqa: ANN001
    """The client-side helpers every page uses, on the edge cases the data really has."""
    open_page(page, seeded.collector.url + "/sweep")
    fmt = page.evaluate(
        "['nan', 'inf', '-inf', '3e-4', 'abc', '', null, 0.00012, 123456, 3.14159, 2].map((x) => SM.fmt(x))"
    )
    assert fmt == ["NaN", "inf", "-inf", "3.00e-4", "abc", "", "\u2013", "1.20e-4", "1.23e+5", "3.142", "2"]
    assert page.evaluate(
        "[SM.decode('inf') === Infinity, Number.isNaN(SM.decode('nan')), SM.decode(2.5)]"
    ) == [
        True,
        True,
        2.5,
    ]
    assert page.evaluate("SM.parseKey('layer.11.fc2.l2_mean')") == {
        "key": "layer.11.fc2.l2_mean",
        "layer": 11,
        "site": "fc2",
        "stat": "l2_mean",
    }
    # Binning keeps each bin's maximum; +inf wins a bin, NaN only fills an otherwise empty one.
    binned = page.evaluate(
        "(() => { const b = SM.binMax(["
        " {steps: [0, 1, 2, 3], values: [1, 5, 2, 2], max: [1, 5, Infinity, NaN]},"
        " {steps: [0, 1, 2, 3], values: [1, 1, 1, 1], max: [NaN, 1, 1, 1]}], 2);"
        " return {x: b.x, rows: b.rows.map((r) => r.map((v) => String(v)))}; })()"
    )
    assert binned == {"x": [1, 3], "rows": [["5", "Infinity"], ["1", "1"]]}
    # A real series answer from the API, normalised, and appended without duplicating steps.
    merged = page.evaluate(
        f"""(async () => {{
            const id = {seeded.diverging!r};
            const a = await SM.fetchSeries(id, ['loss'], {{from: 0, to: 260, max_points: 20000}});
            const b = await SM.fetchSeries(id, ['loss'], {{from: 250, max_points: 20000}});
            const grew = SM.appendSeries(a, b);
            const s = a.loss;
            return {{n: s.steps.length, last: s.steps[s.steps.length - 1], grew,
                     nanAt260: SM.nonFiniteAt(s, 260), finiteAt10: SM.nonFiniteAt(s, 10)}};
        }})()"""
    )
    assert merged == {"n": 300, "last": 299, "grew": True, "nanAt260": True, "finiteAt10": False}
