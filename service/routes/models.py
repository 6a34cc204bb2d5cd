"""/v1/models: upload (streamed, size-capped, validated in a sandboxed child) and read."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select
from sqlalchemy.orm import Session

from compressors import Limits, inspect_model, load_model
from service import quotas
from service.deps import CurrentTenant, ReadSessionDep, SessionDep, SettingsDep, StoreDep
from service.models import StoredModel, Tenant
from service.problems import Problem
from service.retention import delete_upload
from service.routes import paginate
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
    return ModelRecord(
        id=model.id,
        filename=model.filename,
        sha256=model.sha256,
        size_bytes=model.size_bytes,
        params=info["params"],
        macs=info["macs"],
        opset=info["opset"],
        inputs=info["inputs"],
        outputs=info["outputs"],
        eligible_layers=[la["name"] for la in info["layers"] if la["eligible"]],
        layers=info["layers"],
        retrainable=bool(info.get("retrainable")),
        retrainable_reason=info.get("retrainable_reason", ""),
        created_at=model.created_at,
    )


def _inspect(path: Path, limits: Limits) -> dict:
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        loaded = load_model(path, Path(tmp), limits)
        info = inspect_model(loaded)
        return {**info.to_dict(), "sha256": loaded.sha256, "file_bytes": loaded.file_bytes}


_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
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
                }
            }
        },
    },
    "responses": {"415": {"description": "not multipart/form-data"}},
}


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
        size, digest = await stream_to_file(_chunks(file), staging / "upload", settings.max_model_bytes)
        upload = Upload(staging / "upload", file.filename or "model.onnx", size, digest)
        return await _store(upload, tenant, session, settings, store)


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(1 << 20):
        yield chunk


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
def list_models(
    tenant: CurrentTenant,
    session: ReadSessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> Page[ModelRecord]:
    query = select(StoredModel).where(StoredModel.tenant_id == tenant.id)
    return paginate(session, query.order_by(StoredModel.created_at, StoredModel.id), limit, offset, record)


@router.get("/{model_id}", response_model=ModelRecord, operation_id="models-get", responses={200: _NEXT})
def get_model(model_id: str, tenant: CurrentTenant, session: ReadSessionDep) -> ModelRecord:
    model = session.get(StoredModel, model_id)
    if model is None or model.tenant_id != tenant.id:
        raise Problem("not-found", f"no model '{model_id}' in your account.")
    return record(model)


@router.delete(
    "/{model_id}",
    status_code=204,
    response_class=Response,
    operation_id="models-delete",
    responses={409: {"description": "jobs still use the model (problem type in-use)"}},
)
def delete_model(model_id: str, tenant: CurrentTenant, session: SessionDep, store: StoreDep) -> Response:
    model = session.get(StoredModel, model_id)
    if model is None or model.tenant_id != tenant.id:
        raise Problem("not-found", f"no model '{model_id}' in your account.")
    delete_upload(session, store, model)
    return Response(status_code=204)
