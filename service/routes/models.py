"""/v1/models: upload (streamed, size-capped, validated in a sandboxed child) and read."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from compressors import Limits, inspect_model, load_model
from service import quotas
from service.deps import CurrentTenant, ReadSessionDep, SessionDep, SettingsDep, StoreDep
from service.models import StoredModel, Tenant
from service.problems import Problem
from service.retention import delete_upload
from service.routes import WindowDep, chunks, deletes, from_row, multipart_body, owned, tenant_page
from service.schemas import ModelRecord, Page
from service.settings import Settings
from service.store import ArtifactStore, clean_name, stream_to_file
from service.uploads import Upload, receive_multipart

router = APIRouter(prefix="/v1/models", tags=["models"])

# OpenAPI links: what to do next with a model record (a compression job or a sweep on it).
# The body is a template whose expression fields are filled from the response, the way
# schemathesis' stateful run (tests/test_schemathesis.py) follows it.
_NEXT = {
    "links": {
        operation: {"operationId": operation, "requestBody": {"model_id": "$response.body#/id"}}
        for operation in ("jobs-create", "sweeps-create")
    }
}


_CREATED: dict[int | str, dict[str, Any]] = {
    201: _NEXT,
    507: {"description": "the server is out of storage; retry later (Retry-After)"},
}


def record(model: StoredModel) -> ModelRecord:
    info = model.info
    return from_row(
        ModelRecord,
        model,
        **{key: info[key] for key in ("params", "macs", "opset", "inputs", "outputs", "layers")},
        eligible_layers=[la["name"] for la in info["layers"] if la["eligible"]],
        retrainable=bool(info.get("retrainable")),
        retrainable_reason=info.get("retrainable_reason", ""),
    )


def _inspect(path: Path, limits: Limits) -> dict:
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        loaded = load_model(path, Path(tmp), limits)
        info = inspect_model(loaded)
        return {**info.to_dict(), "sha256": loaded.sha256, "file_bytes": loaded.file_bytes}


_BODY = multipart_body(
    {
        "title": "Body_models-create",
        "type": "object",
        "required": ["file"],
        "properties": {
            "file": {
                "type": "string",
                "format": "binary",
                "contentMediaType": "application/octet-stream",
                "title": "File",
                "description": ".onnx file or .zip bundle with external data",
            }
        },
    },
    {"415": "not multipart/form-data"},
)


@router.post(
    "",
    status_code=201,
    response_model=ModelRecord,
    operation_id="models-create",
    responses={201: _NEXT},
    openapi_extra=_BODY,
)
async def create_model(
    request: Request, tenant: CurrentTenant, session: SessionDep, settings: SettingsDep, store: StoreDep
) -> ModelRecord:
    # the body is streamed into the staging folder as it arrives (service.uploads)
    with store.staging() as staging:
        upload = await receive_multipart(request, "file", staging / "upload", settings.max_model_bytes)
        if upload.filename is None:
            raise Problem("validation-error", "send the model as multipart field 'file'.")
        return await _store(upload, tenant, session, settings, store)


async def create_model_from_file(
    file: UploadFile, tenant: Tenant, session: Session, settings: Settings, store: ArtifactStore
) -> ModelRecord:
    """The same as ``create_model`` for a file part a form parser has already read (the dashboard)."""
    with store.staging() as staging:
        size, digest = await stream_to_file(chunks(file), staging / "upload", settings.max_model_bytes)
        upload = Upload(staging / "upload", file.filename or "model.onnx", size, digest)
        return await _store(upload, tenant, session, settings, store)


async def _store(
    upload: Upload, tenant: Tenant, session: Session, settings: Settings, store: ArtifactStore
) -> ModelRecord:
    name = clean_name(upload.filename, "model.onnx")
    if not name.lower().endswith((".onnx", ".zip")):
        raise Problem("model-rejected", f"'{name}' is neither an .onnx file nor a .zip bundle.")
    path = upload.path.rename(upload.path.with_name(name))
    limits = Limits(max_file_bytes=settings.max_model_bytes)
    info = await run_in_threadpool(_inspect, path, limits)
    # in the transaction that inserts (a SQLite write lock): never held across an await
    quotas.check_storage(session, tenant, settings, upload.size)
    info.pop("sha256")  # hashed while the body arrived
    model = StoredModel(
        tenant_id=tenant.id, filename=path.name, sha256=upload.sha256, size_bytes=upload.size, info=info
    )
    session.add(model)
    session.flush()
    store.publish(path, store.folder(tenant.id, "models", model.id) / path.name)
    session.commit()
    return record(model)


@router.get("", response_model=Page[ModelRecord], operation_id="models-list")
def list_models(tenant: CurrentTenant, session: ReadSessionDep, window: WindowDep) -> Page[ModelRecord]:
    return tenant_page(session, StoredModel, tenant, window, record)


@router.get("/{model_id}", response_model=ModelRecord, operation_id="models-get", responses={200: _NEXT})
def get_model(model_id: str, tenant: CurrentTenant, session: ReadSessionDep) -> ModelRecord:
    return record(owned(session, StoredModel, tenant, model_id))


@deletes(router, "/{model_id}", "models-delete", "jobs still use the model (problem type in-use)")
def delete_model(model_id: str, tenant: CurrentTenant, session: SessionDep, store: StoreDep) -> Response:
    delete_upload(session, store, owned(session, StoredModel, tenant, model_id))
    return Response(status_code=204)
