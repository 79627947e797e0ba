"""Unit tests of the dashboard's server-side pieces: template filling and escaping, the JSON
config block, redirect targets, the thresholds taken from the detector's configuration, the
asset loader (that the dashboard never imports torch is checked in
tests/architecture/test_layers.py).
"""

from __future__ import annotations

import json

import pytest

from dashboard import assets, render
from dashboard.auth import safe_next
from dashboard.thresholds import thresholds_for
from stabmon.detect import DetectorConfig


def test_fill_escapes_values_but_not_raw_names() -> None:
    out = render.fill("<p>{{a}}</p>{{b}}", {"a": '<b x="1">&', "b": "<i>ok</i>"}, raw=frozenset({"b"}))
    assert out == "<p>&lt;b x=&quot;1&quot;&gt;&amp;</p><i>ok</i>"


def test_fill_refuses_a_missing_value() -> None:
    with pytest.raises(KeyError, match="nope"):
        render.fill("{{nope}}", {})


def test_script_json_cannot_close_the_script_element() -> None:
    s = render.script_json({"name": "</script><script>alert(1)</script>", "amp": "a&b"})
    assert "</script>" not in s and "<" not in s and "&" not in s
    assert json.loads(s) == {"name": "</script><script>alert(1)</script>", "amp": "a&b"}


def test_script_json_rejects_non_finite_numbers() -> None:
    with pytest.raises(ValueError):
        render.script_json({"x": float("nan")})


def test_page_shell_references_its_script_and_config() -> None:
    html = render.page(page="sweep", title="LR <sweep>", project="p&q", root_path="/stabmon", config={"k": 1})
    assert "<title>LR &lt;sweep&gt; · stabmon</title>" in html
    assert 'src="/stabmon/static/sweep.js?v=' in html and 'src="/stabmon/static/plotly.min.js?v=' in html
    assert "<b>p&amp;q</b>" in html
    cfg = json.loads(html.split('type="application/json">', 1)[1].split("</script>", 1)[0])
    assert cfg == {
        "api": "/stabmon/api/v1",
        "root": "/stabmon/",
        "login": "/stabmon/login",
        "page": "sweep",
        "k": 1,
    }
    assert 'href="/stabmon/sweep" class="active"' in html


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/runs/abc?x=1", "/runs/abc?x=1"),
        ("", "/"),
        (None, "/"),
        ("runs", "/"),
        ("//evil.example", "/"),
        ("https://evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("javascript:alert(1)", "/"),
    ],
)
def test_safe_next(target, expected: str) -> None:  # noqa: ANN001
    assert safe_next(target, "/") == expected


def test_thresholds_are_the_detectors() -> None:
    d = DetectorConfig().logit_max
    assert thresholds_for({}) == {
        "logit_max": {"warning": d.warning, "critical": d.critical},
        "logit_bound": {"warning": d.bound_warning, "critical": d.bound_critical},
    }
    dotted = thresholds_for({"detector": {"logit_max.warning": 42, "logit_max.max_severity": "warning"}})
    assert dotted["logit_max"] == {"warning": 42.0, "critical": None}
    assert thresholds_for({"detector": {"logit_max": {"enabled": False}}}) == {
        "logit_max": {},
        "logit_bound": {},
    }


def test_thresholds_include_the_layers_saved_with_the_run() -> None:
    layers = {"collector": {"logit_max": {"warning": 50.0}}, "project": {"logit_max": {"critical": 100.0}}}
    drawn = thresholds_for({"detector": {"logit_max.critical": 80}}, layers)
    assert drawn["logit_max"] == {"warning": 50.0, "critical": 80.0}  # the run's own wins
    assert thresholds_for({}, layers)["logit_max"] == {"warning": 50.0, "critical": 100.0}


def test_invalid_overrides_fall_back_to_defaults() -> None:
    assert thresholds_for({"detector": {"no_such_rule": {}}}) == thresholds_for(None)
    assert thresholds_for({"detector": "garbage"}) == thresholds_for(None)


def test_assets_are_exact_names_only() -> None:
    assert assets.load("run.js").media_type.startswith("text/javascript")
    assert assets.load("stabmon.css").media_type.startswith("text/css")
    for bad in ("../pages.py", "run.html", "__init__.py", ""):
        with pytest.raises(KeyError):
            assets.load(bad)
    plotly = assets.load(assets.PLOTLY_JS)
    assert plotly.body == assets.plotly_js_path().read_bytes() and len(plotly.gzipped) < len(plotly.body) // 2
