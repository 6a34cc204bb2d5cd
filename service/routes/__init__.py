"""Route modules, one per resource, and what they share: paging, ownership, uploads' chunks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel
from sqlalchemy import Select, select
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile

from service.models import Job, StoredDataset, StoredModel, Tenant
from service.problems import Problem
from service.schemas import Page

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R", bound=BaseModel)
Owned = TypeVar("Owned", Job, StoredModel, StoredDataset)
NOUNS: dict[type[Any], str] = {Job: "job", StoredModel: "model", StoredDataset: "dataset"}


def deletes(router: APIRouter, path: str, operation_id: str, conflict: str) -> Callable[[F], F]:
    """The DELETE of a resource: 204 and no body, or 409 (``conflict`` says when)."""
    return router.delete(
        path,
        status_code=204,
        response_class=Response,
        operation_id=operation_id,
        responses={409: {"description": conflict}},
    )


@dataclass(frozen=True)
class Window:
    """Which page of a list: ``limit`` items from ``offset``."""

    limit: int = 50
    offset: int = 0


Limit = Annotated[int, Query(ge=1, le=200)]
Offset = Annotated[int, Query(ge=0, le=1_000_000_000)]


def _window(limit: Limit = 50, offset: Offset = 0) -> Window:
    return Window(limit, offset)


WindowDep = Annotated[Window, Depends(_window)]


def multipart_body(form: dict[str, Any], answers: dict[str, str]) -> dict[str, Any]:
    """The OpenAPI of an upload whose body is the multipart ``form`` (the route streams the body
    itself, so FastAPI cannot describe it), and its extra answers by status."""
    return {
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": form}}},
        "responses": {status: {"description": text} for status, text in answers.items()},
    }


def paginate(session: Session, query: Select[Any], window: Window, record: Callable[[Any], T]) -> Page[T]:
    """One page of an ordered query; ``next_offset`` is null on the last page."""
    limit, offset = window.limit, window.offset
    rows = session.scalars(query.offset(offset).limit(limit + 1)).all()
    return Page(
        items=[record(row) for row in rows[:limit]], next_offset=offset + limit if len(rows) > limit else None
    )


def tenant_page(
    session: Session, kind: type[Owned], tenant: Tenant, window: Window, record: Callable[[Any], T]
) -> Page[T]:
    """A tenant's models or datasets, oldest first."""
    query = select(kind).where(kind.tenant_id == tenant.id).order_by(kind.created_at, kind.id)
    return paginate(session, query, window, record)


def from_row(schema: type[R], row: Any, **fields: Any) -> R:
    """A record whose fields are the row's attributes of the same names, and ``fields``."""
    columns = {name: getattr(row, name) for name in schema.model_fields if hasattr(row, name)}
    return schema(**{**columns, **fields})


def owned(session: Session, kind: type[Owned], tenant: Tenant, row_id: str) -> Owned:
    """The tenant's row with this id; 404 for an unknown id and for another tenant's alike."""
    row = session.get(kind, row_id)
    if row is None or row.tenant_id != tenant.id:
        raise Problem("not-found", f"no {NOUNS[kind]} '{row_id}' in your account.")
    return row


async def chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    """A form's file part, a megabyte at a time."""
    while chunk := await upload.read(1 << 20):
        yield chunk
