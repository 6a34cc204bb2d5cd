"""Route modules, one per resource, and the paging they share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import Session

from service.schemas import Page

T = TypeVar("T")


def paginate(
    session: Session, query: Select[Any], limit: int, offset: int, record: Callable[[Any], T]
) -> Page[T]:
    """One page of an ordered query; ``next_offset`` is null on the last page."""
    rows = session.scalars(query.offset(offset).limit(limit + 1)).all()
    return Page(
        items=[record(row) for row in rows[:limit]], next_offset=offset + limit if len(rows) > limit else None
    )
