"""Browser sessions for the dashboard: the project token in an HttpOnly cookie.

A browser authenticates once: a page opened with ``?token=...`` (the URL ``stabmon demo``
prints) or the login form validates the token against the store, stores it in the
``stabmon_token`` cookie (HttpOnly, SameSite=Strict, Secure behind HTTPS) and redirects to the
same URL without the token, so it never stays in the address bar or the history. The
collector's API dependency accepts the same cookie, so the pages' JavaScript simply fetches
``/api/v1/...`` with it. Nothing is stored server-side: revoking the token ends every session.

SameSite=Strict has one trap: a link followed from another site (a chat message, an alert
e-mail) arrives without the cookie, even when the browser holds it. Such a request
(``Sec-Fetch-Site: cross-site``) gets a page that reloads itself once; the reload is
same-site, so the cookie comes along.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from fastapi import Request, Response

COOKIE_NAME = "stabmon_token"
COOKIE_MAX_AGE_S = 30 * 24 * 3600
MAX_TOKEN_LEN = 256


def store_of(request: Request):  # noqa: ANN201 - monitor.store.Store
    """The collector's :class:`monitor.store.Store` (the app keeps it on ``app.state``). The
    dashboard sits beneath the collector and never imports it: it calls ``get_run`` (LookupError
    for a missing run), ``run_detector_layers`` and ``resolve_token`` on what it finds here."""
    store = getattr(request.app.state, "store", None)
    if store is None:
        raise RuntimeError("the dashboard is mounted on an app without a store (app.state.store)")
    return store


def resolve(request: Request, token: str | None):  # noqa: ANN201 - Project | None
    """The project of an active token, or None for a missing, malformed, unknown or revoked one."""
    if not token or len(token) > MAX_TOKEN_LEN:
        return None
    return store_of(request).resolve_token(token)


def request_token(request: Request) -> str | None:
    """The token a request carries: ``Authorization: Bearer`` first, then the cookie (the
    same order as the API's dependency)."""
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.cookies.get(COOKIE_NAME) or None


def set_session(response: Response, request: Request, token: str) -> None:
    response.set_cookie(
        COOKIE_NAME,
        token,
        max_age=COOKIE_MAX_AGE_S,
        path=request.scope.get("root_path", "") or "/",
        httponly=True,
        samesite="strict",
        secure=is_https(request),
    )


def clear_session(response: Response, request: Request) -> None:
    response.delete_cookie(
        COOKIE_NAME,
        path=request.scope.get("root_path", "") or "/",
        httponly=True,
        samesite="strict",
        secure=is_https(request),
    )


def is_https(request: Request) -> bool:
    # Behind a TLS-terminating proxy uvicorn sets the scheme from X-Forwarded-Proto
    # when started with --proxy-headers (the Dockerfile does).
    return request.url.scheme == "https"


def without_token(request: Request) -> str:
    """The request's path and query with ``token`` removed: where to send the browser once
    the cookie is set."""
    query = [(k, v) for k, v in parse_qsl(request.url.query, keep_blank_values=True) if k != "token"]
    path = request.scope.get("root_path", "") + request.url.path
    return urlunsplit(("", "", path, urlencode(query), ""))


def safe_next(target: str | None, default: str) -> str:
    """A post-login destination that stays on this site: a local absolute path, never
    ``//host`` or ``scheme:`` (open redirects)."""
    if not target:
        return default
    parts = urlsplit(target)
    if (
        parts.scheme
        or parts.netloc
        or not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
    ):
        return default
    return target


def same_origin_post(request: Request) -> bool:
    """True unless the browser says the form was posted from another origin (login/logout
    CSRF). Clients that send no Origin (curl, old browsers) pass: the cookie is SameSite=Strict
    anyway, so a cross-site POST would not carry it."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    return urlsplit(origin).netloc == host


def cross_site_navigation(request: Request) -> bool:
    """A top-level navigation that came from another site (its SameSite=Strict cookie was withheld)."""
    return request.headers.get("sec-fetch-site") == "cross-site" and request.headers.get(
        "sec-fetch-mode"
    ) in (
        "navigate",
        None,
    )
