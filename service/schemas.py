"""Request and response bodies of the REST API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Generic, Literal, TypeVar, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from compressors import METHODS
from service.spec import METHODS_NAMES, SpecBase, spec_class

T = TypeVar("T")


def _as_utc(value: datetime) -> datetime:
    # the database keeps naive UTC (service.models.utcnow); RFC 3339 date-times need the offset
    return value if value.tzinfo else value.replace(tzinfo=UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_offset: int | None = Field(None, description="pass as ?offset= for the next page; null at the end")


class ModelRecord(BaseModel):
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
    layers: list[dict[str, Any]]
    retrainable: bool
    retrainable_reason: str
    created_at: UtcDatetime


class DatasetRecord(BaseModel):
    id: str
    name: str
    builtin: str | None
    sha256: str
    size_bytes: int
    samples: int
    sample_shape: list[int | str]
    labelled: bool
    validation_samples: int
    created_at: UtcDatetime


class BuiltinDataset(BaseModel):
    model_config = ConfigDict(extra="forbid")
    builtin: Literal["digits"]


class _Target(BaseModel):
    model_id: str = Field(min_length=1, max_length=40)
    dataset_id: str | None = Field(None, max_length=40)


class _Job(SpecBase, _Target):
    pass


JOBS = {name: spec_class(method, _Job, "Job") for name, method in METHODS.items()}
if TYPE_CHECKING:
    JobCreate = _Job
else:
    JobCreate = Annotated[Union[tuple(JOBS.values())], Field(discriminator="method")]  # noqa: UP007


class SweepTraining(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(5, ge=1, le=1000)
    lr: float = Field(1e-3, gt=0, le=10)
    batch_size: int = Field(64, ge=1, le=65536)
    finetune_epochs: int = Field(0, ge=0, le=1000)


class SweepCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model_id: str = Field(min_length=1, max_length=40)
    dataset_id: str = Field(min_length=1, max_length=40)
    methods: list[Literal[METHODS_NAMES]] = Field(min_length=1, max_length=len(METHODS_NAMES))  # type: ignore[valid-type]
    targets: list[Annotated[float, Field(gt=0, lt=1)]] | None = Field(None, min_length=1, max_length=20)
    strengths: dict[str, list[Annotated[float, Field(ge=0, le=1e6)]]] = Field(default_factory=dict)
    seeds: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] = Field(
        default_factory=lambda: [0], min_length=1, max_length=5
    )
    training: SweepTraining = Field(default_factory=SweepTraining)
    latency: bool = False


class Progress(BaseModel):
    stage: str | None = None
    fraction: float | None = None
    epoch: int | None = None
    eta_s: float | None = None
    metrics: dict[str, float] = Field(default_factory=dict)


class JobRecord(BaseModel):
    id: str
    kind: Literal["job", "sweep"]
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    model_id: str
    dataset_id: str | None
    spec: dict[str, Any]
    progress: Progress
    error: dict[str, Any] | None
    attempts: int
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    artifacts: list[str] = Field(default_factory=list, description="names for /artifacts/{name}")
