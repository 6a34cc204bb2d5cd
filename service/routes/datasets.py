"""/v1/datasets: an .npz upload (never unpickled) or a built-in set."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session
from starlette.datastructures import FormData, UploadFile

from compressors import HOLDOUT, MAX_DATASET_BYTES, describe_dataset
from service import quotas
from service.deps import CurrentTenant, ReadSessionDep, SessionDep, SettingsDep, StoreDep
from service.models import StoredDataset, Tenant
from service.problems import Problem
from service.retention import delete_upload
from service.routes import WindowDep, chunks, deletes, from_row, multipart_body, owned, tenant_page
from service.schemas import BuiltinDataset, DatasetRecord, Page
from service.settings import Settings
from service.store import ArtifactStore, clean_name, stream_to_file
from service.uploads import Upload, receive_multipart

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

_BUILTIN = {"type": "string", "enum": ["digits"], "description": "a dataset the server ships with"}
_NPZ = {
    "type": "string",
    "format": "binary",
    "contentMediaType": "application/octet-stream",
    "description": ".npz with one array per model input, named after it (x for a single input), "
    "and y; a validation split under the same names with _val; never unpickled",
}
# One content type only: generated clients mishandle an operation with two request bodies
# (openapi-python-client emits a module that does not import). The JSON form
# {"builtin": "digits"} is still accepted, as the description says.
_BODY = multipart_body(
    {
        "title": "DatasetUpload",
        "description": "exactly one of `file` or `builtin`",
        "type": "object",
        "properties": {"file": _NPZ, "builtin": _BUILTIN},
    },
    {
        "415": "neither multipart/form-data nor application/json",
        "507": "the server is out of storage; retry later (Retry-After)",
    },
)
_DESCRIPTION = (
    "Upload an .npz as multipart field `file`, or name a built-in set in field `builtin`. "
    'The JSON body `{"builtin": "digits"}` is accepted too.'
)


def record(dataset: StoredDataset) -> DatasetRecord:
    info = dataset.info
    keys = ("samples", "sample_shape", "labelled", "validation_samples")
    return from_row(DatasetRecord, dataset, **{key: info[key] for key in keys})


def describe_npz(path: Path, max_unpacked_bytes: int = MAX_DATASET_BYTES) -> dict[str, Any]:
    """Check a .npz from its array headers (never unpickled, never loaded) and say what it holds;
    shape fit is checked per job."""
    return describe_dataset(path, max_unpacked_bytes, HOLDOUT)


def _builtin(session: Session, tenant: Tenant, name: object) -> StoredDataset:
    if name != "digits":
        raise Problem("validation-error", f"no built-in dataset {name!r}; the server offers: digits.")
    digest = hashlib.sha256(b"builtin:" + name.encode()).hexdigest()
    dataset = StoredDataset(
        tenant_id=tenant.id,
        name=name,
        builtin=name,
        sha256=digest,
        size_bytes=0,
        info={"samples": 1797, "sample_shape": [64], "labelled": True, "validation_samples": 359},
    )
    session.add(dataset)
    session.commit()
    return dataset


def _builtin_from_json(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise Problem("bad-request", "the body is not valid JSON; send a JSON object.") from exc
    try:
        return BuiltinDataset.model_validate(data).builtin
    except ValueError as exc:
        raise Problem("validation-error", 'send {"builtin": "digits"} or upload an .npz file.') from exc


async def _store_npz(
    path: Path, upload: Upload, tenant: Tenant, session: Session, settings: Settings, store: ArtifactStore
) -> StoredDataset:
    info = await run_in_threadpool(describe_npz, path, settings.max_dataset_unpacked_bytes)
    # in the transaction that inserts (a SQLite write lock): never held across an await
    quotas.check_storage(session, tenant, settings, upload.size)
    dataset = StoredDataset(
        tenant_id=tenant.id,
        name=clean_name(upload.filename, "data.npz", limit=300),
        builtin=None,
        sha256=upload.sha256,  # hashed while the body arrived
        size_bytes=upload.size,
        info=info,
    )
    session.add(dataset)
    session.flush()
    store.publish(path, store.folder(tenant.id, "datasets", dataset.id) / "data.npz")
    session.commit()
    return dataset


def _one_of(upload: Upload, builtin: str | None) -> None:
    if (upload.filename is None) == (builtin is None):
        raise Problem("validation-error", "send exactly one of 'file' (an .npz) or 'builtin' (digits).")


@router.post(
    "",
    status_code=201,
    response_model=DatasetRecord,
    operation_id="datasets-create",
    openapi_extra=_BODY,
    description=_DESCRIPTION,
)
async def create_dataset(
    request: Request, tenant: CurrentTenant, session: SessionDep, settings: SettingsDep, store: StoreDep
) -> DatasetRecord:
    # a multipart body is streamed into the staging folder as it arrives (service.uploads); a
    # JSON body is held to the small JSON limit before it is read (service.bodies)
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        return record(_builtin(session, tenant, _builtin_from_json(await request.body())))
    if not content_type.startswith("multipart/form-data"):
        raise Problem("unsupported-media-type", "upload an .npz as multipart field 'file', or send JSON.")
    with store.staging() as staging:
        upload = await receive_multipart(request, "file", staging / "data.npz", settings.max_dataset_bytes)
        builtin = upload.fields.get("builtin")
        _one_of(upload, builtin)
        if builtin is not None:
            return record(_builtin(session, tenant, builtin))
        return record(await _store_npz(upload.path, upload, tenant, session, settings, store))


async def create_dataset_from_form(
    form: FormData, tenant: Tenant, session: Session, settings: Settings, store: ArtifactStore
) -> DatasetRecord:
    """The same as ``create_dataset`` for a form a parser has already read (the dashboard)."""
    file, builtin = form.get("file"), form.get("builtin")
    if file is not None and not isinstance(file, UploadFile):
        raise Problem("validation-error", "field 'file' must be a file part holding an .npz.")
    with store.staging() as staging:
        upload = Upload(staging / "data.npz", file.filename or "data.npz" if file else None)
        if file is not None:
            upload.size, upload.sha256 = await stream_to_file(
                chunks(file), upload.path, settings.max_dataset_bytes
            )
        _one_of(upload, builtin if isinstance(builtin, str) or builtin is None else "")
        if isinstance(builtin, str):
            return record(_builtin(session, tenant, builtin))
        return record(await _store_npz(upload.path, upload, tenant, session, settings, store))


@router.get("", response_model=Page[DatasetRecord], operation_id="datasets-list")
def list_datasets(tenant: CurrentTenant, session: ReadSessionDep, window: WindowDep) -> Page[DatasetRecord]:
    return tenant_page(session, StoredDataset, tenant, window, record)


@router.get("/{dataset_id}", response_model=DatasetRecord, operation_id="datasets-get")
def get_dataset(dataset_id: str, tenant: CurrentTenant, session: ReadSessionDep) -> DatasetRecord:
    return record(owned(session, StoredDataset, tenant, dataset_id))


@deletes(router, "/{dataset_id}", "datasets-delete", "jobs still use the dataset (problem type in-use)")
def delete_dataset(dataset_id: str, tenant: CurrentTenant, session: SessionDep, store: StoreDep) -> Response:
    delete_upload(session, store, owned(session, StoredDataset, tenant, dataset_id))
    return Response(status_code=204)
