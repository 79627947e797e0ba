"""HTML rendering for the dashboard: the page shell, the per-page fragments and the login
form, filled from small templates in ``dashboard/templates`` (package data).

The pages are static shells: the data comes from the JSON API, fetched by the pages'
JavaScript. Templates use ``{{name}}`` placeholders; every value is HTML-escaped except the
page fragment (itself rendered from a template) and the JSON config block, whose ``<``, ``>``
and ``&`` are escaped as JSON unicode escapes so no value can close the ``<script>`` element.
"""

from __future__ import annotations

import html
import importlib.resources
import json
import re
from functools import cache
from typing import Any

from dashboard import assets

_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")

# Security headers of every HTML answer. The pages load scripts only from this origin (no
# inline script: the config block is JSON, not executed); Plotly injects <style> elements,
# hence 'unsafe-inline' for styles only.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; font-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"
)
HTML_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@cache
def template(name: str) -> str:
    return (importlib.resources.files("dashboard") / "templates" / name).read_text(encoding="utf-8")


def fill(text: str, values: dict[str, Any], raw: frozenset[str] = frozenset()) -> str:
    """Replace ``{{name}}`` placeholders; names in ``raw`` are inserted unescaped. A placeholder
    without a value is an error (a template and its caller out of step)."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in values:
            raise KeyError(f"template placeholder {{{{{name}}}}} has no value")
        v = values[name]
        return str(v) if name in raw else html.escape("" if v is None else str(v), quote=True)

    return _PLACEHOLDER.sub(sub, text)


def script_json(data: Any) -> str:
    """JSON safe inside a ``<script type="application/json">`` element."""
    s = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def root_of(root_path: str) -> str:
    return root_path.rstrip("/") + "/"


def page(
    *,
    page: str,
    title: str,
    project: str,
    root_path: str,
    config: dict[str, Any],
    fragment_values: dict[str, Any] | None = None,
) -> str:
    """A full dashboard page: the shell with the fragment ``templates/{page}.html``, the
    config block for ``static/common.js`` and the page's own script ``static/{page}.js``."""
    root = root_of(root_path)
    static = root + "static"
    body = fill(template(f"{page}.html"), {"root": root, **(fragment_values or {})})
    cfg = {"api": root + "api/v1", "root": root, "login": root + "login", "page": page, **config}
    values = {
        "title": title,
        "static": static,
        "version": assets.static_version(),
        "plotly_version": assets.plotly_version(),
        "config": script_json(cfg),
        "page": page,
        "root": root,
        "project": project,
        "body": body,
        **{f"nav_{p}": "active" if p == page or (p == "runs" and page == "run") else "" for p in NAV},
    }
    return fill(template("page.html"), values, raw=frozenset({"config", "body"}))


NAV = ("runs", "compare", "sweep")


def login(*, root_path: str, message: str = "", next_url: str = "") -> str:
    root = root_of(root_path)
    return fill(
        template("login.html"),
        {
            "static": root + "static",
            "version": assets.static_version(),
            "root": root,
            "message": message,
            "next": next_url,
        },
    )


def reload_once() -> str:
    """A page that reloads itself at once: see :mod:`dashboard.auth` (cross-site arrivals)."""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="refresh" content="0"><title>stabmon</title></head>'
        "<body>Opening stabmon&hellip;</body></html>"
    )


def not_found(*, root_path: str, project: str, what: str) -> str:
    root = root_of(root_path)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Not found · stabmon</title>'
        f'<link rel="stylesheet" href="{html.escape(root)}static/stabmon.css"></head><body>'
        f'<header class="top"><a class="brand" href="{html.escape(root)}runs">stabmon</a></header>'
        f'<main><div class="card"><h1>Not found</h1><p>{html.escape(what)} '
        f"in project <b>{html.escape(project)}</b>.</p>"
        f'<p><a href="{html.escape(root)}runs">Back to the runs list</a></p></div></main></body></html>'
    )
