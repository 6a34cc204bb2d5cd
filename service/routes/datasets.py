"""/v1/datasets: an .npz upload (never unpickled) or a built-in set."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile

from compressors import HOLDOUT, MAX_DATASET_BYTES, DatasetRejected
from service.deps import CurrentTenant, ReadSessionDep, SessionDep, SettingsDep, StoreDep
from service.models import StoredDataset, Tenant
from service.problems import Problem
from service.routes import paginate
from service.schemas import BuiltinDataset, DatasetRecord, Page
from service.settings import Settings
from service.store import ArtifactStore, clean_name, stream_to_file

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

MAX_FORM_FIELDS = 16  # extra form fields are ignored, as /v1/models ignores them
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
_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "title": "DatasetUpload",
                    "description": "exactly one of `file` or `builtin`",
                    "type": "object",
                    "properties": {"file": _NPZ, "builtin": _BUILTIN},
                }
            },
        },
    },
    "responses": {
        "415": {"description": "neither multipart/form-data nor application/json"},
        "507": {"description": "the server is out of storage; retry later (Retry-After)"},
    },
}
_DESCRIPTION = (
    "Upload an .npz as multipart field `file`, or name a built-in set in field `builtin`. "
    'The JSON body `{"builtin": "digits"}` is accepted too.'
)


def record(dataset: StoredDataset) -> DatasetRecord:
    info = dataset.info
    return DatasetRecord(
        id=dataset.id,
        name=dataset.name,
        builtin=dataset.builtin,
        sha256=dataset.sha256,
        size_bytes=dataset.size_bytes,
        samples=info["samples"],
        sample_shape=info["sample_shape"],
        labelled=info["labelled"],
        validation_samples=info["validation_samples"],
        created_at=dataset.created_at,
    )


def describe_npz(path: Path) -> dict[str, Any]:
    """Check a .npz without unpickling and say what it holds; shape fit is checked per job."""
    try:
        with zipfile.ZipFile(path) as archive:
            if sum(i.file_size for i in archive.infolist()) > MAX_DATASET_BYTES:
                raise DatasetRejected(f"the dataset unpacks to more than {MAX_DATASET_BYTES:,} bytes.")
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except DatasetRejected:
        raise
    except ValueError as exc:
        raise DatasetRejected(
            "the dataset holds object arrays, which would need unpickling; store plain numeric arrays."
        ) from exc
    except Exception as exc:
        raise DatasetRejected("the dataset is not a readable .npz file; save it with numpy.savez.") from exc
    inputs = {k: a for k, a in arrays.items() if k not in ("y", "y_val") and not k.endswith("_val")}
    for key, array in inputs.items():
        numeric = np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_
        if array.ndim < 2 or not numeric or len(array) == 0:
            raise DatasetRejected(
                f"'{key}' must be a numeric array shaped (N, ...) with N >= 1: one array per model "
                "input, named after it (x for a single input)."
            )
    if not inputs:
        raise DatasetRejected(
            "the .npz needs one array per model input, named after it (x for a single input)."
        )
    counts = {len(a) for a in inputs.values()}
    if len(counts) > 1:
        raise DatasetRejected(f"the input arrays hold different numbers of samples: {sorted(counts)}.")
    x = inputs.get("x", next(iter(inputs.values())))
    for key in ("y", "y_val"):
        if key in arrays and (
            arrays[key].ndim not in (1, 2) or not np.issubdtype(arrays[key].dtype, np.integer)
        ):
            raise DatasetRejected(
                f"'{key}' must hold integer class labels: one per sample, or one per position (N, seq)."
            )
    if "y" in arrays and len(arrays["y"]) != len(x):
        raise DatasetRejected(f"'y' has {len(arrays['y'])} labels for {len(x)} inputs; they must match.")
    val = next((a for k, a in arrays.items() if k.endswith("_val") and k != "y_val"), None)
    return {
        "samples": len(x),
        "sample_shape": [int(d) for d in x.shape[1:]],
        "labelled": "y" in arrays,
        "validation_samples": len(val) if val is not None else round(len(x) * HOLDOUT),
    }


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
    upload: UploadFile, tenant: Tenant, session: Session, settings: Settings, store: ArtifactStore
) -> StoredDataset:
    staging = store.staging()
    try:
        target = staging / "data.npz"

        async def chunks():  # type: ignore[no-untyped-def]
            while chunk := await upload.read(1 << 20):
                yield chunk

        size = await stream_to_file(chunks(), target, settings.max_dataset_bytes)
        info = await run_in_threadpool(describe_npz, target)
        digest = hashlib.sha256(target.read_bytes()).hexdigest()
        dataset = StoredDataset(
            tenant_id=tenant.id,
            name=clean_name(upload.filename, "data.npz", limit=300),
            builtin=None,
            sha256=digest,
            size_bytes=size,
            info=info,
        )
        session.add(dataset)
        session.flush()
        store.publish(target, store.folder(tenant.id, "datasets", dataset.id) / "data.npz")
        session.commit()
        return dataset
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        return record(_builtin(session, tenant, _builtin_from_json(await request.body())))
    if not content_type.startswith("multipart/form-data"):
        raise Problem("unsupported-media-type", "upload an .npz as multipart field 'file', or send JSON.")
    form = await request.form(
        max_files=1, max_fields=MAX_FORM_FIELDS, max_part_size=settings.max_dataset_bytes
    )
    try:
        upload, builtin = form.get("file"), form.get("builtin")
        if (upload is None) == (builtin is None):
            raise Problem("validation-error", "send exactly one of 'file' (an .npz) or 'builtin' (digits).")
        if builtin is not None:
            return record(_builtin(session, tenant, builtin))
        if not isinstance(upload, UploadFile):
            raise Problem("validation-error", "field 'file' must be a file part holding an .npz.")
        return record(await _store_npz(upload, tenant, session, settings, store))
    finally:
        await form.close()


@router.get("", response_model=Page[DatasetRecord], operation_id="datasets-list")
def list_datasets(
    tenant: CurrentTenant,
    session: ReadSessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> Page[DatasetRecord]:
    query = select(StoredDataset).where(StoredDataset.tenant_id == tenant.id)
    return paginate(
        session, query.order_by(StoredDataset.created_at, StoredDataset.id), limit, offset, record
    )


@router.get("/{dataset_id}", response_model=DatasetRecord, operation_id="datasets-get")
def get_dataset(dataset_id: str, tenant: CurrentTenant, session: ReadSessionDep) -> DatasetRecord:
    dataset = session.get(StoredDataset, dataset_id)
    if dataset is None or dataset.tenant_id != tenant.id:
        raise Problem("not-found", f"no dataset '{dataset_id}' in your account.")
    return record(dataset)
