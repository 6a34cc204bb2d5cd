"""/healthz (the process answers), /readyz (database and broker reachable), /metrics."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, Histogram, generate_latest
from pydantic import SecretStr
from sqlalchemy import func, select, text

from service.db import session_scope
from service.models import Job
from service.problems import Problem

router = APIRouter(tags=["health"])


@router.get("/healthz", operation_id="health-live")
async def healthz() -> dict[str, str]:
    # answered on the event loop itself: never queued behind the thread pool that database
    # reads, uploads' checks and event publishers share
    return {"status": "ok"}


def _checks(request: Request) -> dict[str, str]:
    settings = request.app.state.settings
    checks = {}
    try:
        with session_scope(settings.db_url, readonly=True) as session:
            session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
    checks["broker"] = request.app.state.executor.check()
    return checks


@router.get(
    "/readyz", operation_id="health-ready", responses={503: {"description": "a dependency is unreachable"}}
)
async def readyz(request: Request) -> JSONResponse:
    checks = await run_in_threadpool(_checks, request)
    ready = all(v == "ok" for v in checks.values())
    if ready:
        return JSONResponse({"status": "ready", "checks": checks})
    from service.problems import problem_body

    body = problem_body(
        "service-unavailable",
        "not ready: " + ", ".join(f"{k} {v}" for k, v in checks.items() if v != "ok"),
        503,
        checks=checks,
    )
    return JSONResponse(body, status_code=503, media_type="application/problem+json")


def _check_metrics_token(request: Request, token: SecretStr | None) -> None:
    """With ``metrics_token`` set, /metrics answers only a scraper that sends it (the figures say
    how busy the service is; an operator may not want that public). No figure is per tenant."""
    if token is None:
        return
    expected = f"Bearer {token.get_secret_value()}".encode()
    if not hmac.compare_digest(request.headers.get("authorization", "").encode(), expected):
        raise Problem(
            "unauthorized",
            "send the metrics token as 'Authorization: Bearer <token>' (MODELPRESS_METRICS_TOKEN).",
        )


@router.get(
    "/metrics",
    operation_id="metrics-get",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        401: {"description": "MODELPRESS_METRICS_TOKEN is set and the request does not carry it"},
    },
)
def metrics(request: Request) -> Response:
    settings = request.app.state.settings
    _check_metrics_token(request, settings.metrics_token)
    registry = CollectorRegistry()
    by_state = Gauge("modelpress_jobs", "jobs by state", ["state"], registry=registry)
    durations = Histogram(
        "modelpress_job_duration_seconds",
        "durations of finished jobs",
        buckets=(1, 5, 15, 60, 300, 900, 3600, 14400),
        registry=registry,
    )
    depth = Gauge("modelpress_queue_depth", "jobs waiting for a worker", registry=registry)
    with session_scope(settings.db_url, readonly=True) as session:
        counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        for value in session.scalars(
            select(Job.duration_s)
            .where(Job.duration_s.is_not(None))
            .order_by(Job.finished_at.desc())
            .limit(1000)
        ):
            durations.observe(float(value or 0.0))
    for state in ("queued", "running", "succeeded", "failed", "cancelled"):
        by_state.labels(state).set(counts.get(state, 0))
    depth.set(counts.get("queued", 0))
    body = generate_latest(registry) + generate_latest(request.app.state.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
