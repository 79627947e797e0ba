"""The dashboard's HTTP surface against a real collector: the ``?token=`` -> cookie ->
redirect flow and its cookie flags, the login form (never data) for missing, invalid or
revoked tokens, open-redirect and CSRF guards, the cross-site reload, the run page's 404 and
thresholds, security headers, and Plotly's bundle served from the installed package.
"""

from __future__ import annotations

import importlib.resources
import json
import re

import httpx
import pytest

from dashboard.auth import COOKIE_NAME
from stabmon.detect import DetectorConfig
from tests.dashboard.conftest import create_run


@pytest.fixture()
def anon(seeded) -> httpx.Client:  # noqa: ANN001
    with httpx.Client(base_url=seeded.collector.url, timeout=30.0, follow_redirects=False) as c:
        yield c


def _config(html: str) -> dict:
    m = re.search(r'<script id="stabmon-config" type="application/json">(.*?)</script>', html, re.S)
    assert m, "page has no config block"
    return json.loads(m.group(1))


def test_token_in_url_sets_a_strict_httponly_cookie_and_redirects_without_it(seeded, anon) -> None:
    token = seeded.collector.token
    r = anon.get(f"/runs/{seeded.diverging}", params={"token": token, "tab": "alerts"})
    assert r.status_code == 303
    assert r.headers["location"] == f"/runs/{seeded.diverging}?tab=alerts"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE_NAME}={token};")
    flags = {f.strip().lower() for f in cookie.split(";")[1:]}
    assert "httponly" in flags and "samesite=strict" in flags and "path=/" in flags
    assert "secure" not in flags  # plain http here; set behind https
    # The cookie alone now opens the page, and the API answers the page's fetches with it.
    anon.cookies.set(COOKIE_NAME, token)
    page = anon.get(r.headers["location"])
    assert page.status_code == 200
    assert "baseline-lr1e-2" in page.text
    api = anon.get(f"/api/v1/runs/{seeded.diverging}/alerts")
    assert api.status_code == 200 and api.json()


def test_https_requests_get_a_secure_cookie(seeded, anon) -> None:
    r = anon.get("/runs", params={"token": seeded.collector.token}, headers={"X-Forwarded-Proto": "https"})
    assert r.status_code == 303
    assert "secure" in {f.strip().lower() for f in r.headers["set-cookie"].split(";")}


@pytest.mark.parametrize("path", ["/", "/runs", "/runs/healthy", "/compare?runs=healthy", "/sweep"])
def test_invalid_token_gets_the_login_form_and_no_data(seeded, anon, path: str) -> None:
    r = anon.get(path + ("&" if "?" in path else "?") + "token=stm_not-a-real-token")
    assert r.status_code == 401
    assert "set-cookie" not in r.headers
    assert 'name="token"' in r.text and "not valid" in r.text
    assert "qk_norm-lr3e-3" not in r.text and "stabmon-config" not in r.text


def test_no_token_gets_the_login_form(anon) -> None:
    r = anon.get("/runs/healthy")
    assert r.status_code == 401
    assert '<form class="login" method="post"' in r.text
    assert 'value="/runs/healthy"' in r.text  # comes back here after signing in
    assert "qk_norm-lr3e-3" not in r.text


def test_a_revoked_token_ends_the_session(seeded, anon) -> None:
    from monitor.store import Store

    store = Store(seeded.collector.db, pool_size=1)
    try:
        token, info = store.create_token("stability", label="to revoke")
        anon.cookies.set(COOKIE_NAME, token)
        assert anon.get("/runs").status_code == 200
        store.revoke_token(str(info.id))
    finally:
        store.dispose()
    r = anon.get("/runs")
    assert r.status_code == 401 and "expired" in r.text
    assert f'{COOKIE_NAME}=""' in r.headers["set-cookie"] or "Max-Age=0" in r.headers["set-cookie"]


def test_login_form_post(seeded, anon) -> None:
    bad = anon.post("/login", data={"token": "stm_wrong", "next": "/sweep"})
    assert bad.status_code == 401 and "not valid" in bad.text and "set-cookie" not in bad.headers
    ok = anon.post("/login", data={"token": seeded.collector.token, "next": "/sweep"})
    assert ok.status_code == 303 and ok.headers["location"] == "/sweep"
    assert ok.headers["set-cookie"].startswith(f"{COOKIE_NAME}=")


@pytest.mark.parametrize(
    "target", ["https://evil.example/x", "//evil.example/x", "/\\evil.example", "javascript:x"]
)
def test_login_never_redirects_off_site(seeded, anon, target: str) -> None:
    r = anon.post("/login", data={"token": seeded.collector.token, "next": target})
    assert r.status_code == 303 and r.headers["location"] == "/"


def test_cross_origin_login_and_logout_posts_are_refused(seeded, anon) -> None:
    r = anon.post(
        "/login", data={"token": seeded.collector.token}, headers={"Origin": "https://evil.example"}
    )
    assert r.status_code == 403 and "set-cookie" not in r.headers
    anon.cookies.set(COOKIE_NAME, seeded.collector.token)
    out = anon.post("/logout", headers={"Origin": "https://evil.example"})
    assert out.status_code == 303 and "set-cookie" not in out.headers
    out = anon.post("/logout", headers={"Origin": seeded.collector.url})
    assert out.status_code == 303 and "Max-Age=0" in out.headers["set-cookie"]


def test_cross_site_arrival_without_cookie_reloads_once(anon) -> None:
    r = anon.get("/runs/healthy", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"})
    assert r.status_code == 200
    assert '<meta http-equiv="refresh" content="0">' in r.text
    assert "qk_norm-lr3e-3" not in r.text
    again = anon.get("/runs/healthy", headers={"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "navigate"})
    assert again.status_code == 401  # the reload: no loop, the login form


def test_run_page_carries_the_detectors_thresholds(seeded) -> None:
    with seeded.collector.client() as c:
        html = c.get("/runs/diverging").text
        cfg = _config(html)
        defaults = DetectorConfig().logit_max
        assert cfg["run_id"] == "diverging"
        assert cfg["thresholds"]["logit_max"] == {"warning": defaults.warning, "critical": defaults.critical}
        assert cfg["api"] == "/api/v1" and cfg["max_points"] >= 500
        # A run that overrides the detector sees its own lines.
        rid = create_run(
            c,
            "custom-thresholds",
            {"variant": "baseline", "detector": {"logit_max": {"warning": 50, "critical": 120}}},
        )
        cfg = _config(c.get(f"/runs/{rid}").text)
        assert cfg["thresholds"]["logit_max"] == {"warning": 50.0, "critical": 120.0}


def test_run_names_are_escaped(seeded) -> None:
    with seeded.collector.client() as c:
        rid = create_run(c, "<script>alert(1)</script></script>", {"variant": "x</script>"})
        html = c.get(f"/runs/{rid}").text
    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert _config(html)["run_id"] == rid


def test_unknown_run_and_other_projects_run_are_404(seeded, anon) -> None:
    from monitor.store import Store

    with seeded.collector.client() as c:
        assert c.get("/runs/no-such-run").status_code == 404
    store = Store(seeded.collector.db, pool_size=1)
    try:
        other, _ = store.create_token("other-project")
    finally:
        store.dispose()
    with seeded.collector.client(other) as c:
        r = c.get(f"/runs/{seeded.healthy}")
        assert r.status_code == 404
        assert "qk_norm-lr3e-3" not in r.text


def test_pages_send_security_headers(seeded) -> None:
    with seeded.collector.client() as c:
        for path in ("/runs", "/runs/healthy", "/compare?runs=healthy", "/sweep"):
            r = c.get(path)
            assert r.status_code == 200, path
            csp = r.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
            assert "unsafe-eval" not in csp and r.headers["cache-control"] == "no-store"
            # Scripts come from this server only: no CDN.
            for src in re.findall(r'<script src="([^"]+)"', r.text):
                assert src.startswith("/static/"), src


def test_plotly_is_served_from_the_installed_package(seeded, anon) -> None:
    bundle = (importlib.resources.files("plotly") / "package_data" / "plotly.min.js").read_bytes()
    r = anon.get("/static/plotly.min.js", headers={"Accept-Encoding": "identity"})
    assert r.status_code == 200 and r.content == bundle
    assert r.headers["content-type"].startswith("text/javascript")
    z = anon.get("/static/plotly.min.js", headers={"Accept-Encoding": "gzip"})
    assert z.headers["content-encoding"] == "gzip"
    # httpx undoes the encoding: what arrives is the bundle, byte for byte, in fewer bytes.
    assert z.content == bundle
    assert int(z.headers["content-length"]) < len(bundle) // 2
    etag = r.headers["etag"]
    assert anon.get("/static/plotly.min.js", headers={"If-None-Match": etag}).status_code == 304


@pytest.mark.parametrize("name", ["../pages.py", "nope.js", "%2e%2e%2fauth.py", "run.html"])
def test_static_serves_nothing_else(anon, name: str) -> None:
    assert anon.get(f"/static/{name}").status_code == 404


def test_static_assets_need_no_token(anon) -> None:
    for name in ("stabmon.css", "common.js", "run.js", "runs.js", "compare.js", "sweep.js"):
        r = anon.get(f"/static/{name}")
        assert r.status_code == 200, name
        assert len(r.content) > 500
