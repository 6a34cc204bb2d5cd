"""/healthz (the process answers), /readyz (database and broker reachable), /metrics."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import SecretStr
from sqlalchemy import case, func, select, text

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
    _check_metrics_token(request, request.app.state.settings.metrics_token)
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)


DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 14400)
STATES = ("queued", "running", "succeeded", "failed", "cancelled")


class JobsCollector(Collector):
    """Job states, queue depth and the job-duration histogram, read from the jobs table at
    each scrape by one query pair. The histogram counts every finished job once, so its
    ``_count`` and buckets only ever grow (Prometheus counters' contract)."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url

    def collect(self) -> Iterator[Metric]:
        finished = Job.duration_s.is_not(None)
        columns: list[Any] = [func.count(), func.coalesce(func.sum(Job.duration_s), 0.0)]
        columns += [func.sum(case((Job.duration_s <= b, 1), else_=0)) for b in DURATION_BUCKETS]
        with session_scope(self.db_url, readonly=True) as session:
            counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
            total, seconds, *cumulative = session.execute(select(*columns).where(finished)).one()
        states = GaugeMetricFamily("modelpress_jobs", "jobs by state", labels=["state"])
        for state in STATES:
            states.add_metric([state], counts.get(state, 0))
        yield states
        yield GaugeMetricFamily(
            "modelpress_queue_depth", "jobs waiting for a worker", counts.get("queued", 0)
        )
        buckets = [(str(b), int(c or 0)) for b, c in zip(DURATION_BUCKETS, cumulative, strict=True)]
        yield HistogramMetricFamily(
            "modelpress_job_duration_seconds",
            "durations of finished jobs",
            buckets=[*buckets, ("+Inf", int(total))],
            sum_value=float(seconds),
        )
