"""Typed records, mirroring the server's ``service/schemas.py``.

Unknown fields are kept (``extra="allow"``), so a newer server does not break an older client.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
METHODS = ("svd", "nuclear", "l2", "l1", "group_lasso", "variational", "prune")
SPARSE_METHODS = frozenset({"l1", "prune", "variational"})  # nonzeros shrink, params and MACs do not


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class Page(_Record, Generic[T]):
    """One page of a list; pass ``next_offset`` as ``offset`` for the next (None at the end)."""

    items: list[T]
    next_offset: int | None = None


class Model(_Record):
    id: str
    filename: str
    sha256: str
    size_bytes: int
    params: int
    macs: int
    opset: int
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    eligible_layers: list[str]
    layers: list[dict[str, Any]] = Field(default_factory=list)
    retrainable: bool
    retrainable_reason: str = ""
    created_at: datetime


class Dataset(_Record):
    id: str
    name: str
    builtin: str | None = None
    sha256: str
    size_bytes: int
    samples: int
    sample_shape: list[int | str]
    labelled: bool
    validation_samples: int
    created_at: datetime


class Progress(_Record):
    stage: str | None = None
    fraction: float | None = None
    epoch: int | None = None
    eta_s: float | None = None
    metrics: dict[str, float] = Field(default_factory=dict)


class Problem(_Record):
    """Why a job failed: an RFC 9457 problem, as the API's errors are."""

    type: str = "about:blank"
    title: str = ""
    status: int | None = None
    detail: str = ""

    @property
    def kind(self) -> str:
        """The last segment of ``type``, e.g. ``dataset-rejected``."""
        return self.type.rsplit("/", 1)[-1]


class Job(_Record):
    """A compression job or a sweep (``kind``); ``artifacts`` fill in when it succeeds."""

    id: str
    kind: Literal["job", "sweep"] = "job"
    status: JobStatus
    model_id: str
    dataset_id: str | None = None
    spec: dict[str, Any] = Field(default_factory=dict)
    progress: Progress = Field(default_factory=Progress)
    error: Problem | None = None
    attempts: int = 0
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    artifacts: list[str] = Field(default_factory=list)

    @property
    def done(self) -> bool:
        """True in every terminal state: succeeded, failed or cancelled."""
        return self.status in TERMINAL

    @property
    def method(self) -> str | None:
        method = self.spec.get("method")
        return str(method) if method is not None else None
