"""Error handling: every failure is a JSON ``{"detail": ...}`` with a 4xx/503 that names the
problem, counted in ``stabmon_requests_rejected_total{reason}``.

- bodies over ``STABMON_MAX_BODY_BYTES``: 413, decided from Content-Length before anything
  is read, and by counting the bytes of chunked/streamed bodies as they arrive;
- validation errors: 422 listing (location, message) per problem, without echoing the input
  (a rejected 10,000-point batch must not come back as a 10,000-point error);
- store errors: NotFound 404, Conflict 409, LimitExceeded 422 (naming the limit); values the
  database refuses although they passed validation (a NUL character in a text field on
  PostgreSQL): 422;
- database unreachable or locked: 503 with ``Retry-After``, "database unavailable";
- collector at capacity (no ingest slot within the wait, see :mod:`monitor.api.admission`, or
  no free database connection within the pool's timeout): 503 with ``Retry-After``, "collector
  overloaded". The database is up, just busy; the client should back off, not page anyone;
- anything else is a bug: logged with its traceback, answered 500 with a generic message.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from monitor.api.admission import Overloaded
from monitor.metrics import AppMetrics
from monitor.store import Conflict, LimitExceeded, NotFound
from monitor.store.errors import DATABASE_DOWN, POOL_EXHAUSTED, UNSTORABLE

log = logging.getLogger("monitor.api")


def too_large_detail(limit: int) -> str:
    return f"request body too large: the limit is {limit} bytes (STABMON_MAX_BODY_BYTES)"


class BodyLimitMiddleware:
    """Pure ASGI middleware enforcing the body-size limit before FastAPI parses anything."""

    def __init__(self, app, max_bytes: int, metrics: AppMetrics) -> None:  # noqa: ANN001
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    def _too_large(self) -> JSONResponse:
        self.metrics.reject("body_too_large")
        return JSONResponse({"detail": too_large_detail(self.max_bytes)}, status_code=413)

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    self.metrics.reject("bad_request")
                    await JSONResponse({"detail": "invalid Content-Length header"}, status_code=400)(
                        scope, receive, send
                    )
                    return
                if length > self.max_bytes:
                    await self._too_large()(scope, receive, send)
                    return
        seen = 0
        started = False
        limit = self.max_bytes

        async def limited_receive():  # noqa: ANN202
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # Raised inside the route's body read; FastAPI re-raises HTTPExceptions.
                    raise HTTPException(status_code=413, detail="body_too_large")
            return message

        async def tracking_send(message) -> None:  # noqa: ANN001
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except HTTPException as e:  # only if it escaped the app's own handlers
            if e.detail != "body_too_large" or started:
                raise
            await self._too_large()(scope, receive, send)


def document_error_shapes(app: FastAPI) -> None:
    """Make the OpenAPI schema describe the 422 bodies this app really sends: ``detail`` is a
    list of ``{"loc": "body.points.0.step", "msg", "type"}`` (``loc`` dotted, not FastAPI's
    array) for validation errors, or a string naming the problem for checks made in a route
    (an unknown detector rule, a limit). Generated clients and schema-driven tests then agree
    with the wire."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        comps = schema.get("components", {}).get("schemas", {})
        if "ValidationError" in comps:
            comps["ValidationError"]["properties"]["loc"] = {
                "type": "string",
                "title": "Location",
                "description": "Dotted path of the offending input, e.g. body.points.0.step",
            }
        if "HTTPValidationError" in comps:
            comps["HTTPValidationError"]["properties"]["detail"] = {
                "title": "Detail",
                "anyOf": [
                    {"type": "array", "items": {"$ref": "#/components/schemas/ValidationError"}},
                    {"type": "string"},
                ],
            }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi


def install_error_handlers(app: FastAPI, metrics: AppMetrics, retry_after_s: int) -> None:
    @app.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException) -> JSONResponse:
        if e.status_code == 413 and e.detail == "body_too_large":
            limit = request.app.state.settings.max_body_bytes
            metrics.reject("body_too_large")
            return JSONResponse(
                {"detail": too_large_detail(limit)},
                status_code=413,
            )
        if e.status_code == 404:
            metrics.reject("not_found")
        elif e.status_code == 403:
            metrics.reject("forbidden")
        elif 400 <= e.status_code < 500 and e.status_code != 401:  # 401 is counted where raised
            metrics.reject("bad_request")
        return JSONResponse({"detail": e.detail}, status_code=e.status_code, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, e: RequestValidationError) -> JSONResponse:
        metrics.reject("validation")
        problems = []
        for err in e.errors()[:20]:
            loc = ".".join(str(p) for p in err.get("loc", ()))
            problems.append({"loc": loc, "msg": err.get("msg", "invalid"), "type": err.get("type", "")})
        return JSONResponse({"detail": problems}, status_code=422)

    @app.exception_handler(NotFound)
    async def _not_found(_request: Request, e: NotFound) -> JSONResponse:
        metrics.reject("not_found")
        return JSONResponse({"detail": str(e)}, status_code=404)

    @app.exception_handler(LimitExceeded)
    async def _limit(_request: Request, e: LimitExceeded) -> JSONResponse:
        metrics.reject("validation")
        return JSONResponse({"detail": str(e)}, status_code=422)

    @app.exception_handler(Conflict)
    async def _conflict(_request: Request, e: Conflict) -> JSONResponse:
        metrics.reject("conflict")
        return JSONResponse({"detail": str(e)}, status_code=409)

    async def _db_down(request: Request, e: Exception) -> JSONResponse:
        metrics.reject("db_unavailable")
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, e)
        return JSONResponse(
            {"detail": "database unavailable; retry later"},
            status_code=503,
            headers={"Retry-After": str(retry_after_s)},
        )

    @app.exception_handler(UNSTORABLE)
    async def _unstorable(_request: Request, e: Exception) -> JSONResponse:
        # Input the database cannot hold although it passed validation, e.g. a NUL character
        # in a text field on PostgreSQL. The transaction was rolled back; nothing was stored.
        metrics.reject("validation")
        reason = str(getattr(e, "orig", e)).splitlines()[0][:300]
        return JSONResponse({"detail": f"value cannot be stored: {reason}"}, status_code=422)

    for exc_type in DATABASE_DOWN:
        app.add_exception_handler(exc_type, _db_down)

    def _busy(detail: str) -> JSONResponse:
        metrics.reject("overloaded")
        return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": str(retry_after_s)})

    @app.exception_handler(Overloaded)
    async def _overloaded(_request: Request, e: Overloaded) -> JSONResponse:
        return _busy(str(e))  # not logged: under overload that is one line per refused batch

    @app.exception_handler(POOL_EXHAUSTED)
    async def _pool_timeout(request: Request, e: Exception) -> JSONResponse:
        # QueuePool's checkout timeout: every connection is in use by other requests.
        log.warning("no free database connection on %s %s: %s", request.method, request.url.path, e)
        return _busy("collector overloaded: every database connection is busy; retry later")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            {"detail": f"internal error ({type(e).__name__}); see the collector's log"}, status_code=500
        )
