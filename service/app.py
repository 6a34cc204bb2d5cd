"""The FastAPI application: ``uvicorn service.app:app`` serves the same app as ``modelpress serve``."""

from __future__ import annotations

import logging
import time
import uuid

from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import openapi, problems, ui
from service.executors import executor_for
from service.logs import request_id
from service.routes import datasets, health, jobs, models
from service.settings import Settings, get_settings
from service.store import ArtifactStore, clean_staging

log = logging.getLogger("modelpress.api")
JSON_LIMIT = 1 << 20


class BodyLimit:
    """413 for bodies over the limit, counted as they arrive (a missing or lying
    Content-Length does not help), before any handler or temp file sees them."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    def limit_for(self, path: str) -> int:
        if path.startswith(("/v1/models", "/ui/models")):
            return self.settings.max_model_bytes + (1 << 20)
        if path.startswith(("/v1/datasets", "/ui/datasets")):
            return self.settings.max_dataset_bytes + (1 << 20)
        return JSON_LIMIT

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._reject(scope, receive, send, limit)
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return message

        async def tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracking)
        except _TooLarge:
            if not started:
                await self._reject(scope, receive, send, limit)

    async def _reject(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        from fastapi.responses import JSONResponse

        rid = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1") or uuid.uuid4().hex
        detail = f"the request body exceeds the {limit:,}-byte limit."
        body = problems.problem_body("payload-too-large", detail, 413, scope["path"], request_id=rid)
        headers = {"Connection": "close", "X-Request-Id": rid}
        await JSONResponse(body, 413, media_type=problems.MEDIA_TYPE, headers=headers)(scope, receive, send)


class _TooLarge(Exception):
    pass


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="modelpress",
        version="0.1.0",
        summary="Model compression as a service: ONNX in, a smaller, faster ONNX out, with an honest report.",
        separate_input_output_schemas=False,
    )
    app.state.settings = settings
    app.state.store = ArtifactStore(settings.artifacts_dir)
    clean_staging(settings.artifacts_dir)  # a server killed mid-upload left its staging behind
    app.state.executor = executor_for(settings)
    app.state.registry = registry = CollectorRegistry()
    requests = Counter("modelpress_http_requests", "HTTP requests", ["method", "status"], registry=registry)
    latency = Histogram("modelpress_http_request_seconds", "HTTP request durations", registry=registry)
    registry.register(health.JobsCollector(settings.db_url))
    problems.install(app)
    openapi.install(app)
    for module in (models, datasets, jobs, health):
        app.include_router(module.router)
    ui.install(app)

    @app.middleware("http")
    async def _request_id(request: Request, call_next):  # type: ignore[no-untyped-def]
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        request.state.request_id = rid
        token = request_id.set(rid)
        start = time.perf_counter()
        try:
            response = await call_next(request)
        finally:
            request_id.reset(token)
        elapsed = time.perf_counter() - start
        response.headers["x-request-id"] = rid
        requests.labels(request.method, str(response.status_code)).inc()
        latency.observe(elapsed)
        if request.url.path not in ("/healthz", "/metrics"):
            log.info(
                "%s %s %s",
                request.method,
                request.url.path,
                response.status_code,
                extra={
                    "method": request.method,
                    "path": request.url.path,
                    "status": response.status_code,
                    "duration_ms": round(elapsed * 1e3, 2),
                },
            )
        return response

    app.add_middleware(BodyLimit, settings=settings)  # type: ignore[arg-type]
    return app


def __getattr__(name: str) -> FastAPI:
    # `uvicorn service.app:app` builds the app from the environment on first access, so that
    # importing this module (tests, the OpenAPI export) needs no settings
    if name == "app":
        instance = create_app()
        globals()["app"] = instance
        return instance
    raise AttributeError(name)
