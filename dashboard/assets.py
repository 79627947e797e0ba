"""Static assets of the dashboard: its own CSS/JS (package data in ``dashboard/static``) and
Plotly's JavaScript bundle taken from the installed ``plotly`` Python package, so the pages
work offline and never load anything from a CDN.

Assets are read once, kept in memory with a gzip copy (plotly.min.js is ~4.6 MB, ~1.4 MB
gzipped) and a content hash as ETag; the page templates reference them with a version query
string, so browsers may cache them for a long time and still pick up a new release at once.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
from dataclasses import dataclass
from functools import cache, lru_cache

from fastapi import HTTPException, Request, Response

MEDIA_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
PLOTLY_JS = "plotly.min.js"


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes
    media_type: str
    etag: str


def _make(body: bytes, name: str) -> Asset:
    suffix = name[name.rfind(".") :]
    digest = hashlib.sha256(body).hexdigest()[:20]
    return Asset(body, gzip.compress(body, compresslevel=6, mtime=0), MEDIA_TYPES[suffix], f'"{digest}"')


def plotly_js_path():  # noqa: ANN201 - an importlib.resources Traversable
    """Where the installed plotly package keeps its JavaScript bundle."""
    return importlib.resources.files("plotly") / "package_data" / PLOTLY_JS


@lru_cache(maxsize=1)
def plotly_version() -> str:
    import plotly

    return str(plotly.__version__)


@cache
def load(name: str) -> Asset:
    """The asset called ``name``: ``plotly.min.js`` or a file of ``dashboard/static``.
    Raises KeyError for anything else (no path traversal: names are matched exactly)."""
    if name == PLOTLY_JS:
        path = plotly_js_path()
        if not path.is_file():
            raise RuntimeError(
                f"plotly's JavaScript bundle is missing at {path}: install the server extra "
                "(pip install 'stabmon[server]'), which brings plotly"
            )
        return _make(path.read_bytes(), name)
    static = importlib.resources.files("dashboard") / "static"
    names = {p.name for p in static.iterdir() if p.is_file() and p.name[p.name.rfind(".") :] in MEDIA_TYPES}
    if name not in names:
        raise KeyError(name)
    return _make((static / name).read_bytes(), name)


def static_version() -> str:
    """A short hash over the dashboard's own assets, for cache-busting URLs."""
    h = hashlib.sha256()
    static = importlib.resources.files("dashboard") / "static"
    for p in sorted(static.iterdir(), key=lambda p: p.name):
        if p.is_file():
            h.update(p.name.encode())
            h.update(load(p.name).etag.encode())
    return h.hexdigest()[:12]


def serve(name: str, request: Request) -> Response:
    """The HTTP answer for one asset: 304 on a matching ETag, gzip when accepted."""
    try:
        asset = load(name)
    except KeyError:
        raise HTTPException(status_code=404, detail=f"no static file {name!r}") from None
    headers = {
        "ETag": asset.etag,
        # Versioned URLs (?v=...) change with the content, so a long lifetime is safe.
        "Cache-Control": "public, max-age=604800" if request.query_params.get("v") else "no-cache",
        "Vary": "Accept-Encoding",
        "X-Content-Type-Options": "nosniff",
    }
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    if "gzip" in request.headers.get("accept-encoding", ""):
        headers["Content-Encoding"] = "gzip"
        return Response(asset.gzipped, media_type=asset.media_type, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)
