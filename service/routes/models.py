"""/v1/models: upload (streamed, size-capped, validated in a sandboxed child) and read."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from compressors import Limits, inspect_model, load_model
from service.deps import CurrentTenant, ReadSessionDep, SessionDep, SettingsDep, StoreDep
from service.models import StoredModel
from service.problems import Problem
from service.routes import paginate
from service.schemas import ModelRecord, Page
from service.store import clean_name, stream_to_file

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


async def _chunks(upload: UploadFile):  # type: ignore[no-untyped-def]
    while chunk := await upload.read(1 << 20):
        yield chunk


@router.post(
    "", status_code=201, response_model=ModelRecord, operation_id="models-create", responses=_CREATED
)
async def create_model(
    file: Annotated[UploadFile, File(description=".onnx file or .zip bundle with external data")],
    tenant: CurrentTenant,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
) -> ModelRecord:
    name = clean_name(file.filename, "model.onnx")
    if not name.lower().endswith((".onnx", ".zip")):
        raise Problem("model-rejected", f"'{name}' is neither an .onnx file nor a .zip bundle.")
    staging = store.staging()
    try:
        upload = staging / name
        size = await stream_to_file(_chunks(file), upload, settings.max_model_bytes)
        info = await run_in_threadpool(_inspect, upload, Limits(max_file_bytes=settings.max_model_bytes))
        model = StoredModel(
            tenant_id=tenant.id, filename=upload.name, sha256=info.pop("sha256"), size_bytes=size, info=info
        )
        session.add(model)
        session.flush()
        store.publish(upload, store.folder(tenant.id, "models", model.id) / upload.name)
        session.commit()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
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
