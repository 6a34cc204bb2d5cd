"""/ui/new: upload a model and a dataset, then submit a job or a sweep, through the API's own
route functions (the same upload checks, sandbox, validation and job creation)."""

from __future__ import annotations

import secrets
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, File, Form, Request, Response, UploadFile
from fastapi.responses import RedirectResponse
from sqlalchemy.orm import Session

from compressors import METHODS
from service.deps import SessionDep, SettingsDep, StoreDep
from service.routes import Window, datasets, jobs, models
from service.spec import RANK_KEYS
from service.ui import forms
from service.ui.access import PostingViewer, SignedIn, Viewer
from service.ui.render import PROBLEMS, PageRoute, page, problem_of

router = APIRouter(prefix="/ui", include_in_schema=False, route_class=PageRoute)
IdempotencyField = Annotated[str | None, Form(max_length=200)]


def new_page(
    request: Request, viewer: SignedIn, session: Session, chosen: dict[str, Any], problem: dict | None = None
) -> Response:
    """The upload and submit forms; ``problem`` is what the API said about the last attempt."""
    return page(
        request,
        "new.html",
        problem["status"] if problem else 200,
        viewer=viewer,
        models=models.list_models(viewer.tenant, session, Window(200)).items,
        datasets=datasets.list_datasets(viewer.tenant, session, Window(200)).items,
        methods=list(METHODS.values()),
        rules=RANK_KEYS,
        chosen=chosen,
        problem=problem,
        idempotency_key=secrets.token_urlsafe(16),  # a double-click submits one job, not two
    )


@router.get("/new")
def new_form(request: Request, viewer: Viewer, session: SessionDep) -> Response:
    return new_page(request, viewer, session, dict(request.query_params))


@router.post("/models")
async def upload_model(
    request: Request,
    viewer: PostingViewer,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    file: Annotated[UploadFile, File()],
) -> Response:
    try:
        model = await models.create_model_from_file(file, viewer.tenant, session, settings, store)
    except PROBLEMS as exc:
        session.rollback()
        return new_page(request, viewer, session, {"form": "model"}, problem_of(exc))
    return RedirectResponse(f"/ui/new?model_id={model.id}", status_code=303)


@router.post("/datasets")
async def upload_dataset(
    request: Request, viewer: PostingViewer, session: SessionDep, settings: SettingsDep, store: StoreDep
) -> Response:
    form = await request.form()
    chosen = {k: v for k, v in form.items() if k == "model_id" and isinstance(v, str)}
    try:
        dataset = await datasets.create_dataset_from_form(form, viewer.tenant, session, settings, store)
    except PROBLEMS as exc:
        session.rollback()
        return new_page(request, viewer, session, {**chosen, "form": "dataset"}, problem_of(exc))
    chosen["dataset_id"] = dataset.id
    return RedirectResponse("/ui/new?" + urlencode(chosen), status_code=303)


@router.post("/jobs")
async def submit_job(
    request: Request,
    viewer: PostingViewer,
    session: SessionDep,
    store: StoreDep,
    idempotency_key: IdempotencyField = None,
) -> Response:
    form = dict((await request.form()).items())
    try:
        record = jobs.create_job(
            request, forms.parse_job(form), viewer.tenant, session, store, idempotency_key
        )
    except PROBLEMS as exc:
        return new_page(request, viewer, session, {**form, "form": "job"}, problem_of(exc))
    return RedirectResponse(f"/ui/jobs/{record.id}", status_code=303)


@router.post("/sweeps")
async def submit_sweep(
    request: Request,
    viewer: PostingViewer,
    session: SessionDep,
    store: StoreDep,
    idempotency_key: IdempotencyField = None,
) -> Response:
    posted = await request.form()
    form = dict(posted.items())
    methods = [str(m) for m in posted.getlist("methods")]
    try:
        body = forms.parse_sweep(methods, form)
        record = jobs.create_sweep(request, body, viewer.tenant, session, store, idempotency_key)
    except PROBLEMS as exc:
        return new_page(
            request, viewer, session, {**form, "methods": methods, "form": "sweep"}, problem_of(exc)
        )
    return RedirectResponse(f"/ui/jobs/{record.id}", status_code=303)
