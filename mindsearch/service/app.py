"""The HTTP face of the backend (FastAPI): versioned JSON routes, thumbnails, the page, metrics.

Safe by default: every route but ``/``, ``/static/*`` and ``/healthz`` needs
``Authorization: Bearer <token>``; bodies are capped; every refusal is a 4xx JSON
``{"error": ..., "code": ...}`` and any internal failure a 500 without a traceback.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from mindsearch.errors import InputError
from mindsearch.service.backend import Backend, Refused, parse_npy

log = logging.getLogger("mindsearch.service")
MAX_BODY = 64 << 20  # bytes: 1,024 rows of NSD's ~16k voxels as float32 fit
PUBLIC = ("/", "/healthz", "/favicon.ico")
NPY_TYPES = ("application/x-npy", "application/octet-stream", "application/npy")


def cpu_timed(fn, *args):
    """``(fn(*args), ms of CPU this thread used meanwhile)``; BLAS/OpenMP helper threads not counted."""
    start = time.thread_time()
    out = fn(*args)
    return out, (time.thread_time() - start) * 1e3


def error(status: int, problem: str, code: str, headers: dict | None = None):
    return JSONResponse({"error": problem, "code": code}, status_code=status, headers=headers)


class Gate:
    """Pure ASGI middleware in front of every route: the bearer token, the body limit (declared
    or streamed), Prometheus timing, and a JSON 500 (never a traceback) for anything unforeseen."""

    def __init__(self, app, *, token: str, limit: int, metrics: "Metrics"):
        self.app, self.limit, self.metrics = app, limit, metrics
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t = time.perf_counter()
        path = scope["path"]
        headers = dict(scope.get("headers") or [])
        status = 500
        started = False

        async def sending(message):
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge(self.limit)
            return message

        declared = headers.get(b"content-length")
        try:
            if not (path in PUBLIC or path.startswith("/static/")
                    or hmac.compare_digest(headers.get(b"authorization", b""), self.expected)):
                await error(401, "missing or wrong bearer token (Authorization: Bearer TOKEN)", "unauthorized",
                            {"WWW-Authenticate": "Bearer"})(scope, receive, sending)
            elif declared is not None and (not declared.isdigit() or int(declared) > self.limit):
                await error(413, f"request body over the limit of {self.limit} bytes", "too_large")(
                    scope, receive, sending)
            else:
                await self.app(scope, counted, sending)
        except Exception as exc:  # the service keeps serving; the client gets one JSON line
            if isinstance(exc, Refused):
                problem, code, code_status = exc.problem, exc.code, exc.status
            else:
                log.exception("internal error on %s", path)
                problem, code, code_status = (f"internal error ({type(exc).__name__}); the service is still "
                                              "running", "internal", 500)
            if not started:
                await error(code_status, problem, code)(scope, receive, sending)
        route = scope.get("route")
        self.metrics.observe(getattr(route, "path", "other"), scope["method"], status, time.perf_counter() - t)


class _TooLarge(Refused):
    def __init__(self, limit: int = MAX_BODY):
        super().__init__(f"request body over the limit of {limit} bytes", 413, "too_large")


class Metrics:
    """Prometheus counters and a latency histogram, in the app's own registry."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("mindsearch_requests", "HTTP requests", ["route", "method", "status"],
                                registry=self.registry)
        self.errors = Counter("mindsearch_errors", "HTTP requests answered 4xx/5xx", ["route", "status"],
                              registry=self.registry)
        self.latency = Histogram("mindsearch_request_seconds", "Request latency", ["route"],
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10),
                                 registry=self.registry)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if status >= 400:
            self.errors.labels(route, str(status)).inc()

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def create_app(backend: Backend, token: str, *, max_body: int = MAX_BODY):
    app = FastAPI(title="mindsearch", docs_url=None, redoc_url=None, openapi_url=None)
    metrics = Metrics()
    static = resources.files("mindsearch.service") / "static"

    @app.exception_handler(Refused)
    async def refused(request, exc: Refused):
        return error(exc.status, exc.problem, exc.code)

    @app.exception_handler(InputError)
    async def rejected(request, exc: InputError):
        return error(422, exc.problem, "rejected")

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return error(422, problems or "invalid request", "invalid")

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        if exc.status_code == 404:
            return error(404, f"nothing at {request.url.path} (see /v1/indexes, /v1/runs, /v1/query, "
                              "/v1/brain, /v1/trials, /images/INDEX/ID)", "not_found")
        return error(exc.status_code, str(exc.detail), "http")

    async def arguments(request: Request) -> tuple[dict, object]:
        """(arguments, array or None) from a JSON body or an .npy body with query parameters."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body = await request.body()
        args = dict(request.query_params)
        if ctype in NPY_TYPES:
            return args, parse_npy(body, "the query")
        if ctype not in ("application/json", ""):
            raise Refused(f"content type {ctype!r} not accepted: send application/json or application/x-npy",
                          415, "unsupported_type")
        try:
            payload = json.loads(body or b"{}")
        except (ValueError, UnicodeDecodeError) as exc:
            raise Refused(f"the body is not valid JSON ({exc})", 400, "malformed_json") from None
        if not isinstance(payload, dict):
            raise Refused("the JSON body must be an object", 400, "malformed_json")
        return {**args, **payload}, None

    # ------------------------------------------------------------------ routes
    @app.get("/healthz")
    def healthz():
        return {"status": "ok", "indexes": len(backend.engine.list()), "runs": len(backend.runs)}

    @app.get("/v1/indexes")
    def indexes():
        return {"indexes": backend.indexes()}

    @app.get("/v1/runs")
    def runs():
        return {"runs": backend.run_list()}

    @app.get("/v1/stores")
    def stores():
        return {"stores": backend.stores()}

    @app.get("/v1/trials")
    def trials(request: Request):
        q = request.query_params
        return backend.trials(q.get("subject"), q.get("split", "test"), q.get("limit"))

    @app.post("/v1/query")
    async def query(request: Request):
        args, array = await arguments(request)
        t = time.perf_counter()
        out, cpu_ms = await run_in_threadpool(cpu_timed, backend.query, args, array)
        # Server-Timing: what the engine took in here, so a client can tell it from the transport,
        # and the CPU it used: wall time well above the CPU time means it waited for a core
        timing = {"Server-Timing": f"engine;dur={(time.perf_counter() - t) * 1e3:.3f}, cpu;dur={cpu_ms:.3f}"}
        # JSONResponse straight away: FastAPI's jsonable_encoder costs ms on thousands of hits
        return JSONResponse(out, headers=timing)

    @app.post("/v1/brain")
    async def brain(request: Request):
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype.startswith("image/"):
            image = await request.body()
            return JSONResponse(await run_in_threadpool(backend.brain, dict(request.query_params), image))
        if ctype == "multipart/form-data":
            form = await request.form()
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise Refused("the form has no file field named image", 400, "missing")
            image = await upload.read()
            return JSONResponse(await run_in_threadpool(backend.brain, {**request.query_params, **{
                k: v for k, v in form.items() if isinstance(v, str)}}, image))
        args, _ = await arguments(request)
        return JSONResponse(await run_in_threadpool(backend.brain, args))

    @app.get("/images/{index}/{ident}")
    def image(index: str, ident: str, size: str | None = None):
        data, ctype = backend.thumbnail(index, ident, size)
        return Response(data, media_type=ctype, headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/metrics")
    def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.text(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse)
    def page():
        return HTMLResponse((static / "index.html").read_text())

    @app.get("/static/{name}")
    def asset(name: str):
        kinds = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}
        suffix = name[name.rfind("."):] if "." in name else ""
        # Only the package's own files by plain name: nothing from a request reaches a path.
        files = {f.name: f for f in static.iterdir()}
        if suffix not in kinds or name not in files:
            raise Refused(f"no static file {name!r}", 404, "not_found")
        return Response(files[name].read_bytes(), media_type=kinds[suffix])

    app.add_middleware(Gate, token=token, limit=max_body, metrics=metrics)
    app.state.backend = backend
    app.state.metrics = metrics
    return app
