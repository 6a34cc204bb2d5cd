"""The FastAPI application: ``uvicorn service.app:app`` serves the same app as ``modelpress serve``."""

from __future__ import annotations

import logging
import time
import uuid

from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry, Counter, Histogram

from service import openapi, problems, retention, ui
from service.auth import FailedAuth
from service.bodies import BodyLimit
from service.events import EventHub
from service.executors import executor_for
from service.logs import request_id
from service.routes import datasets, health, jobs, models
from service.settings import Settings, get_settings
from service.store import ArtifactStore, clean_staging

log = logging.getLogger("modelpress.api")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="modelpress",
        version="0.1.0",
        summary="Model compression as a service: ONNX in, a smaller, faster ONNX out, with an honest report.",
        separate_input_output_schemas=False,
        lifespan=retention.lifespan,
    )
    app.state.settings = settings
    app.state.store = ArtifactStore(settings.artifacts_dir)
    clean_staging(settings.artifacts_dir)  # a server killed mid-upload left its staging behind
    app.state.executor = executor_for(settings)
    app.state.registry = registry = CollectorRegistry()
    app.state.auth_failures = FailedAuth(settings.auth_failures_per_minute)
    app.state.events = EventHub(settings, jobs.read_job_event(settings, app.state.store), registry)
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
