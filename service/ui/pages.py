"""The jobs list, a job's page (a sweep's with its curve), and a comparison of jobs.

Every read goes through the API's own route functions (service.routes.jobs), so a page sees
exactly what the API would answer, tenant scoping and 404s included.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse

from service.deps import ReadSessionDep, SessionDep, SettingsDep, StoreDep
from service.models import TERMINAL
from service.problems import Problem
from service.routes import Offset, jobs
from service.schemas import ArtifactName, JobRecord
from service.store import ArtifactStore
from service.ui import views
from service.ui.access import PostingViewer, Viewer
from service.ui.render import PageRoute, page

router = APIRouter(prefix="/ui", include_in_schema=False, route_class=PageRoute)
PAGE_SIZE = 25
StatusFilter = Annotated[str | None, Query(pattern="^(queued|running|succeeded|failed|cancelled)$")]


def job_context(job: JobRecord, store: ArtifactStore, tenant_id: str) -> dict[str, Any]:
    report = views.read_report(store, tenant_id, job)
    context: dict[str, Any] = {"job": job, "row": views.job_row(job, report), "report": report}
    context["terminal"] = job.status in TERMINAL
    context["duration"] = views.duration(job)
    if report is not None and job.kind == "job":
        context["lines"] = views.measurement_lines(report)
        context["layers"] = views.layer_lines(report)
    if report is not None and job.kind == "sweep":
        context["curve"] = views.sweep_curve(report)
    return context


@router.get("/jobs")
def jobs_page(
    request: Request,
    viewer: Viewer,
    session: ReadSessionDep,
    store: StoreDep,
    offset: Offset = 0,
    status: StatusFilter = None,
) -> Response:
    listing = jobs.list_jobs(viewer.tenant, session, store, PAGE_SIZE, offset, status)
    rows = [views.job_row(job, views.read_report(store, viewer.tenant.id, job)) for job in listing.items]
    return page(
        request, "jobs.html", viewer=viewer, rows=rows, offset=offset, status=status, page_size=PAGE_SIZE,
        next_offset=listing.next_offset,
    )  # fmt: skip


def _job_view(template: str) -> Callable[..., Response]:
    def view(
        request: Request, job_id: str, viewer: Viewer, session: ReadSessionDep, store: StoreDep
    ) -> Response:
        job = jobs.get_job(job_id, viewer.tenant, session, store)
        return page(request, template, viewer=viewer, **job_context(job, store, viewer.tenant.id))

    return view


# a job's page, and the part of it that changes, for the page to swap in when the job ends
router.get("/jobs/{job_id}")(_job_view("job.html"))
router.get("/jobs/{job_id}/live")(_job_view("_job_live.html"))


@router.get("/jobs/{job_id}/row")
def job_row(
    request: Request, job_id: str, viewer: Viewer, session: ReadSessionDep, store: StoreDep
) -> Response:
    """One line of the jobs list, for the list to swap in when the job ends."""
    job = jobs.get_job(job_id, viewer.tenant, session, store)
    row = views.job_row(job, views.read_report(store, viewer.tenant.id, job))
    return page(request, "_job_row.html", viewer=viewer, r=row)


@router.get("/jobs/{job_id}/events")
async def job_events(
    job_id: str, request: Request, viewer: Viewer, settings: SettingsDep, store: StoreDep
) -> StreamingResponse:
    """The API's own server-sent events, for a browser that signs in by cookie."""
    return await jobs.job_events(job_id, request, viewer.tenant, settings, store)


@router.get("/jobs/{job_id}/artifacts/{name}")
def job_artifact(
    job_id: str, name: ArtifactName, viewer: Viewer, session: ReadSessionDep, store: StoreDep
) -> FileResponse:
    return jobs.job_artifact(job_id, name, viewer.tenant, session, store)


@router.post("/jobs/{job_id}/cancel")
def cancel(job_id: str, viewer: PostingViewer, session: SessionDep, store: StoreDep) -> RedirectResponse:
    jobs.cancel_job(job_id, viewer.tenant, session, store)
    return RedirectResponse(f"/ui/jobs/{job_id}", status_code=303)


@router.get("/compare")
def compare(
    request: Request,
    viewer: Viewer,
    session: ReadSessionDep,
    store: StoreDep,
    ids: Annotated[list[str], Query(max_length=8)] = [],  # noqa: B006 (FastAPI copies it)
) -> Response:
    chosen = list(dict.fromkeys(ids))
    if len(chosen) < 2:
        raise Problem("validation-error", "tick two or more jobs in the list to compare them side by side.")
    picked = [jobs.get_job(job_id, viewer.tenant, session, store) for job_id in chosen]
    rows = [(job, views.read_report(store, viewer.tenant.id, job)) for job in picked]
    return page(request, "compare.html", viewer=viewer, jobs=picked, table=views.compare_table(rows))
