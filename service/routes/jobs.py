"""/v1/jobs and /v1/sweeps: submit (idempotent), follow, cancel, fetch the results."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service import quotas, retention
from service.db import session_scope
from service.deps import CurrentTenant, ReadSessionDep, SessionDep, SettingsDep, StoreDep
from service.models import TERMINAL, Job, StoredDataset, StoredModel, Tenant, utcnow
from service.problems import Problem
from service.report_schema import JobReport
from service.routes import Limit, Offset, Window, deletes, owned, paginate
from service.schemas import ArtifactName, JobCreate, JobRecord, Page, Progress, SweepCreate
from service.settings import Settings
from service.spec import CompressionSpec
from service.store import ARTIFACT_NAMES, ArtifactStore

router = APIRouter(tags=["jobs"])
log = logging.getLogger("modelpress.jobs")

# printable ASCII, 1 to 200 characters: an empty or over-long key is a 422, never a job
IdempotencyKey = Annotated[
    str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200, pattern=r"^[!-~][ -~]*$")
]
INSERT_TRIES = 3  # a key's insert race has one winner; the losers read its job


def record(job: Job, store: ArtifactStore) -> JobRecord:
    folder = store.folder(job.tenant_id, "jobs", job.id)
    artifacts = [n for n in ARTIFACT_NAMES if (folder / n).exists()] if job.status == "succeeded" else []
    return JobRecord(
        id=job.id,
        kind=job.kind,
        status=job.status,
        model_id=job.model_id,  # type: ignore[arg-type]
        dataset_id=job.dataset_id,
        spec=job.spec,
        progress=Progress(**(job.progress or {})),
        error=job.error,
        attempts=job.attempts,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        artifacts=artifacts,
    )


def _owned(session: Session, tenant: Tenant, job_id: str) -> Job:
    return owned(session, Job, tenant, job_id)


def _create(
    request: Request, session: Session, tenant: Tenant, kind: str, body: dict[str, Any], key: str | None
) -> tuple[Job, bool]:
    """Insert a job, or return the one this Idempotency-Key already made (same body only)."""
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    for _ in range(INSERT_TRIES):
        existing = _existing(session, tenant, kind, key, digest)
        if existing is not None:
            return existing, False
        settings: Settings = request.app.state.settings
        quotas.check_size(kind, body, settings)
        quotas.check_jobs(session, tenant, settings)
        job = _new_job(session, tenant, kind, body, key, digest)
        session.add(job)
        try:
            session.commit()
        except IntegrityError:  # a concurrent request with the same key won the race: read its job
            session.rollback()
            if not key:
                raise
            continue
        _dispatch(request, job)
        return job, True
    raise Problem("conflict", "this Idempotency-Key is being used by a concurrent request; retry.", 409)


def _existing(session: Session, tenant: Tenant, kind: str, key: str | None, digest: str) -> Job | None:
    if not key:
        return None
    existing = session.scalar(select(Job).where(Job.tenant_id == tenant.id, Job.idempotency_key == key))
    if existing is not None and (existing.request_hash != digest or existing.kind != kind):
        raise Problem(
            "idempotency-conflict", "this Idempotency-Key was used with a different request; use a new key."
        )
    return existing


def _new_job(
    session: Session, tenant: Tenant, kind: str, body: dict[str, Any], key: str | None, digest: str
) -> Job:
    owned(session, StoredModel, tenant, body["model_id"])
    dataset_id = body.get("dataset_id")
    if dataset_id is not None:
        owned(session, StoredDataset, tenant, dataset_id)
    spec = {k: v for k, v in body.items() if k not in ("model_id", "dataset_id")}
    return Job(
        tenant_id=tenant.id,
        kind=kind,
        model_id=body["model_id"],
        dataset_id=dataset_id,
        spec=spec,
        idempotency_key=key,
        request_hash=digest,
        progress={"stage": "queued", "fraction": 0.0},
        dispatched_at=utcnow(),
    )


def _dispatch(request: Request, job: Job) -> None:
    """Send the job to the workers. The job is saved first, so a broker that is down loses
    nothing: the job stays queued and the reaper sends it once the broker is back."""
    try:
        request.app.state.executor.submit(job.id)
    except Exception as exc:
        log.warning("job %s saved but not sent (%s); the reaper will send it", job.id, type(exc).__name__)


_SUBMIT: dict[int | str, dict[str, Any]] = {
    404: {"description": "the model or dataset is not in your account"},
    409: {"description": "a concurrent request with the same Idempotency-Key is still in flight"},
    507: {"description": "the server is out of storage; retry later (Retry-After)"},
}
_NOT_READY: dict[int | str, dict[str, Any]] = {409: {"description": "the job has not succeeded (yet)"}}


@router.post(
    "/v1/jobs", status_code=202, response_model=JobRecord, operation_id="jobs-create", responses=_SUBMIT
)
def create_job(
    request: Request,
    body: JobCreate,
    tenant: CurrentTenant,
    session: SessionDep,
    store: StoreDep,
    idempotency_key: IdempotencyKey = None,
) -> JobRecord:
    job, _ = _create(request, session, tenant, "job", body.model_dump(mode="json"), idempotency_key)
    return record(job, store)


@router.post(
    "/v1/sweeps",
    status_code=202,
    response_model=JobRecord,
    operation_id="sweeps-create",
    responses=_SUBMIT,
)
def create_sweep(
    request: Request,
    body: SweepCreate,
    tenant: CurrentTenant,
    session: SessionDep,
    store: StoreDep,
    idempotency_key: IdempotencyKey = None,
) -> JobRecord:
    job, _ = _create(request, session, tenant, "sweep", body.model_dump(mode="json"), idempotency_key)
    return record(job, store)


@router.get("/v1/jobs", response_model=Page[JobRecord], operation_id="jobs-list")
def list_jobs(
    tenant: CurrentTenant,
    session: ReadSessionDep,
    store: StoreDep,
    limit: Limit = 50,
    offset: Offset = 0,
    status: Annotated[str | None, Query(pattern="^(queued|running|succeeded|failed|cancelled)$")] = None,
) -> Page[JobRecord]:
    query = select(Job).where(Job.tenant_id == tenant.id)
    if status:
        query = query.where(Job.status == status)
    ordered = query.order_by(Job.created_at.desc(), Job.id)
    return paginate(session, ordered, Window(limit, offset), lambda job: record(job, store))


@router.get("/v1/jobs/{job_id}", response_model=JobRecord, operation_id="jobs-get")
def get_job(job_id: str, tenant: CurrentTenant, session: ReadSessionDep, store: StoreDep) -> JobRecord:
    return record(_owned(session, tenant, job_id), store)


@router.get("/v1/sweeps/{job_id}", response_model=JobRecord, operation_id="sweeps-get")
def get_sweep(job_id: str, tenant: CurrentTenant, session: ReadSessionDep, store: StoreDep) -> JobRecord:
    job = _owned(session, tenant, job_id)
    if job.kind != "sweep":
        raise Problem("not-found", f"'{job_id}' is a job, not a sweep; GET /v1/jobs/{job_id}.")
    return record(job, store)


@router.post(
    "/v1/jobs/{job_id}/cancel",
    status_code=202,
    response_model=JobRecord,
    operation_id="jobs-cancel",
    responses={409: {"description": "the job has already finished (problem type job-finished)"}},
)
def cancel_job(job_id: str, tenant: CurrentTenant, session: SessionDep, store: StoreDep) -> JobRecord:
    job = _owned(session, tenant, job_id)
    if job.status in TERMINAL:
        raise Problem("job-finished", f"job '{job_id}' already {job.status}; there is nothing to cancel.")
    unowned = job.lease_owner is None or job.lease_expires is None or job.lease_expires < utcnow()
    if job.status == "queued" or unowned:  # no live worker holds it: cancelled now
        job.status, job.progress = "cancelled", {"stage": "cancelled"}
        job.finished_at, job.lease_owner = utcnow(), None
    else:
        job.cancel_requested = True  # the worker stops before its next training step
    session.commit()
    return record(job, store)


_UNFINISHED = "the job has not finished; cancel it first (problem type conflict)"


@deletes(router, "/v1/jobs/{job_id}", "jobs-delete", _UNFINISHED)
def delete_job(job_id: str, tenant: CurrentTenant, session: SessionDep, store: StoreDep) -> Response:
    """A finished job (or sweep) and its artifacts."""
    retention.delete_job(session, store, _owned(session, tenant, job_id))
    return Response(status_code=204)


@router.get(
    "/v1/jobs/{job_id}/events",
    operation_id="jobs-events",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {
                "text/event-stream": {
                    # one event; OpenAPI 3.1 has no itemSchema (3.2), so `schema` describes each
                    # event, as schemathesis reads it for documents before 3.2
                    "schema": {
                        "type": "object",
                        "required": ["event", "data"],
                        "properties": {
                            "event": {"type": "string", "enum": ["progress", "end"]},
                            "data": {
                                "type": "string",
                                "contentMediaType": "application/json",
                                "contentSchema": {"$ref": "#/components/schemas/JobRecord"},
                            },
                        },
                    }
                }
            },
            "description": "server-sent events: `progress` while running, then one `end`",
        }
    },
)
async def job_events(
    job_id: str, request: Request, tenant: CurrentTenant, settings: SettingsDep, store: StoreDep
) -> StreamingResponse:
    # streams share one publisher per job (service.events); the first event is the job's state
    # now, then each change, with comment heartbeats while nothing changes
    with session_scope(settings.db_url, readonly=True) as session:
        _owned(session, tenant, job_id)
    subscription = request.app.state.events.subscribe(tenant.id, job_id)  # 429 past the cap
    return StreamingResponse(
        subscription.sse(settings.event_heartbeat_seconds),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def read_job_event(settings: Settings, store: ArtifactStore) -> Callable[[str], tuple[str, bool]]:
    """What the event publisher reads for a job: its record as JSON, and whether it finished."""

    def read(job_id: str) -> tuple[str, bool]:
        with session_scope(settings.db_url, readonly=True) as session:
            job = session.get(Job, job_id)
            if job is None:  # deleted while followed
                raise LookupError(job_id)
            return record(job, store).model_dump_json(), job.status in TERMINAL

    return read


def _artifact(job: Job, store: ArtifactStore, name: str) -> FileResponse:
    if name not in ARTIFACT_NAMES:
        raise Problem("not-found", f"no artifact '{name}'; artifacts are {', '.join(ARTIFACT_NAMES)}.")
    if job.status != "succeeded":
        raise Problem("not-ready", f"job '{job.id}' is {job.status}; artifacts appear when it succeeds.")
    path = store.folder(job.tenant_id, "jobs", job.id) / name
    if not path.exists():
        raise Problem("not-found", f"job '{job.id}' has no '{name}' (a {job.kind} does not make one).")
    media = {
        "onnx": "application/octet-stream",
        "json": "application/json",
        "png": "image/png",
        "csv": "text/csv",
    }[name.rsplit(".", 1)[1]]
    return FileResponse(path, media_type=media, filename=name)


@router.get(
    "/v1/jobs/{job_id}/report",
    operation_id="jobs-report",
    response_class=FileResponse,
    responses={200: {"model": JobReport}, **_NOT_READY},
)
def job_report(job_id: str, tenant: CurrentTenant, session: ReadSessionDep, store: StoreDep) -> FileResponse:
    return _artifact(_owned(session, tenant, job_id), store, "report.json")


@router.get(
    "/v1/jobs/{job_id}/artifacts/{name}",
    operation_id="jobs-artifact",
    response_class=FileResponse,
    responses={
        200: {
            "description": "model.onnx, curve.png, curve.csv or report.json",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "image/png": {"schema": {"type": "string", "format": "binary"}},
                "text/csv": {"schema": {"type": "string"}},
                "application/json": {"schema": {"$ref": "#/components/schemas/JobReport"}},
            },
        },
        **_NOT_READY,
    },
)
def job_artifact(
    job_id: str, name: ArtifactName, tenant: CurrentTenant, session: ReadSessionDep, store: StoreDep
) -> FileResponse:
    return _artifact(_owned(session, tenant, job_id), store, name)


@router.post("/v1/jobs/validate", response_model=CompressionSpec, operation_id="jobs-validate")
def validate_spec(spec: CompressionSpec, tenant: CurrentTenant) -> CompressionSpec:
    """Check a job spec alone, before uploading anything; the answer fills in every default.
    It needs a key like every /v1 call (``tenant``), so a client learns of a bad token here too."""
    return spec
