"""The dashboard's routes: the runs list (``/`` and ``/runs``), a run (``/runs/{id}``), the
compare page (``/compare?runs=a,b``), the learning-rate sweep (``/sweep``), login/logout and
the static assets (``/static/...``, Plotly's bundle included).

Every page is read-only and behind the same project tokens as the API (see
:mod:`dashboard.auth`). The handlers only resolve the session, check that a run exists and
render a shell; the data is fetched by the page's JavaScript from ``/api/v1``, so the
dashboard reads exactly what the API serves (downsampling included) and holds no SQL.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from dashboard import assets, auth, render
from dashboard.thresholds import WORTSMAN_DIVERGENCE_LOGIT, thresholds_for

router = APIRouter(include_in_schema=False)

# The run page asks the API for at most this many buckets per series: ~1000 columns is more
# than a plot is wide, whatever the run's length (the API downsamples keeping min/max).
MAX_POINTS = 1000
HEATMAP_BINS = 600  # heatmap columns; each is the max of the buckets falling in it
RUN_POLL_MS = 3000
LIST_POLL_MS = 5000
KEYS_PER_REQUEST = 64  # keys per series request (the API takes up to 200; URLs stay short)
INVALID = "That token is not valid (unknown, revoked or mistyped)."


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=render.HTML_HEADERS)


def _login_page(
    request: Request, message: str = "", status: int = 401, next_url: str | None = None
) -> Response:
    target = next_url if next_url is not None else auth.without_token(request)
    body = render.login(
        root_path=request.scope.get("root_path", ""),
        message=message,
        next_url=auth.safe_next(target, ""),
    )
    return _html(body, status)


def _session(request: Request) -> tuple[Any, Response | None]:
    """(project, None) for an authenticated request, else (None, the answer to send): a
    redirect that trades ``?token=`` for the cookie, the login form, or a one-time reload."""
    token = request.query_params.get("token")
    if token is not None:
        if auth.resolve(request, token) is None:
            return None, _login_page(request, INVALID)
        return None, _trade_token(request, token, auth.without_token(request))
    carried = auth.request_token(request)
    project = auth.resolve(request, carried)
    if project is not None:
        return project, None
    if carried:
        resp = _login_page(request, "Your session has expired or its token was revoked: sign in again.")
        auth.clear_session(resp, request)
        return None, resp
    if auth.cross_site_navigation(request):
        return None, _html(render.reload_once())
    return None, _login_page(request)


def _trade_token(request: Request, token: str, target: str) -> Response:
    """303 to ``target`` with the session cookie set: the token leaves the URL."""
    resp = RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store"})
    auth.set_session(resp, request, token)
    return resp


def _root(request: Request) -> str:
    return render.root_of(request.scope.get("root_path", ""))


def _page(
    request: Request, project: Any, page: str, title: str, config: dict[str, Any], **values: Any
) -> Response:
    body = render.page(
        page=page,
        title=title,
        project=project.name,
        root_path=request.scope.get("root_path", ""),
        config=config,
        fragment_values=values,
    )
    return _html(body)


@router.get("/")
@router.get("/runs")
def runs_page(request: Request) -> Response:
    project, early = _session(request)
    if early is not None:
        return early
    return _page(request, project, "runs", "Runs", {"poll_ms": LIST_POLL_MS})


@router.get("/runs/{run_id}")
def run_page(request: Request, run_id: str) -> Response:
    project, early = _session(request)
    if early is not None:
        return early
    store = auth.store_of(request)
    try:
        run = store.get_run(project.id, run_id)
    except LookupError:  # the store's NotFound: no such run in this project
        body = render.not_found(
            root_path=request.scope.get("root_path", ""), project=project.name, what=f"No run {run_id!r}"
        )
        return _html(body, 404)
    config = {
        "run_id": run.id,
        "max_points": MAX_POINTS,
        "heatmap_bins": HEATMAP_BINS,
        "poll_ms": RUN_POLL_MS,
        "keys_per_request": KEYS_PER_REQUEST,
        "thresholds": thresholds_for(run.config, store.run_detector_layers(project.id, run.id)),
        "logit_divergence_level": WORTSMAN_DIVERGENCE_LOGIT,
    }
    return _page(request, project, "run", run.name, config, run_id=run.id, run_name=run.name)


@router.get("/compare")
def compare_page(request: Request) -> Response:
    project, early = _session(request)
    if early is not None:
        return early
    return _page(request, project, "compare", "Compare runs", {"keys_per_request": KEYS_PER_REQUEST})


@router.get("/sweep")
def sweep_page(request: Request) -> Response:
    project, early = _session(request)
    if early is not None:
        return early
    return _page(request, project, "sweep", "LR sweep", {})


@router.get("/login")
def login_form(request: Request) -> Response:
    token = request.query_params.get("token")
    next_url = auth.safe_next(
        request.query_params.get("next"), render.root_of(request.scope.get("root_path", ""))
    )
    if token is not None:
        if auth.resolve(request, token) is None:
            return _login_page(
                request, "That token is not valid (unknown, revoked or mistyped).", next_url=next_url
            )
        resp = RedirectResponse(next_url, status_code=303, headers={"Cache-Control": "no-store"})
        auth.set_session(resp, request, token)
        return resp
    return _login_page(request, status=200, next_url=request.query_params.get("next") or "")


@router.post("/login")
async def login_submit(request: Request) -> Response:
    if not auth.same_origin_post(request):
        return _login_page(request, "Sign-in must come from this site's own form.", status=403, next_url="")
    body = await request.body()
    if len(body) > 8192:
        return _login_page(request, "The form is too large.", status=413, next_url="")
    form = dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))
    token = form.get("token", "").strip()
    next_url = auth.safe_next(form.get("next"), _root(request))
    # The token lookup is a database query: keep it off the event loop.
    if await run_in_threadpool(auth.resolve, request, token) is None:
        return _login_page(request, INVALID if token else "Enter a token.", next_url=next_url)
    return _trade_token(request, token, next_url)


@router.post("/logout")
def logout(request: Request) -> Response:
    resp = RedirectResponse(_root(request) + "login", status_code=303)
    if auth.same_origin_post(request):
        auth.clear_session(resp, request)
    return resp


@router.get("/static/{name}")
def static_file(name: str, request: Request) -> Response:
    return assets.serve(name, request)
