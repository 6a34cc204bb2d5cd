"""Request and response bodies of the REST API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Generic, Literal, TypeVar, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    WithJsonSchema,
    field_validator,
)

from compressors import METHODS
from service.spec import METHODS_NAMES, CompressionSpec, Integer, SpecBase, integral, spec_class

RETRAINING = frozenset(name for name, method in METHODS.items() if method.retrains)

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
    model_config = ConfigDict(extra="forbid", strict=True)
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
    model_config = ConfigDict(extra="forbid", strict=True)
    epochs: Integer = Field(5, ge=1, le=1000)
    lr: float = Field(1e-3, gt=0, le=10)
    batch_size: Integer = Field(64, ge=1, le=65536)
    finetune_epochs: Integer = Field(0, ge=0, le=1000)


MethodName = Literal[METHODS_NAMES]  # type: ignore[valid-type]
Strengths = list[Annotated[float, Field(ge=0, le=1e6)]]


class SweepSpec(BaseModel):
    """A sweep as its job record shows it: methods × targets, or a strength grid per method."""

    model_config = ConfigDict(extra="forbid", strict=True)
    methods: list[MethodName] = Field(
        min_length=1, max_length=len(METHODS), json_schema_extra={"uniqueItems": True}
    )
    targets: list[Annotated[float, Field(gt=0, lt=1)]] | None = Field(None, min_length=1, max_length=20)
    strengths: dict[str, Strengths] = Field(
        default_factory=dict,
        description="a strength grid per retraining method (svd and prune take none)",
        json_schema_extra={"propertyNames": {"enum": list[JsonValue](sorted(RETRAINING))}},
    )
    seeds: list[Annotated[int, Field(ge=0, le=2**31 - 1), BeforeValidator(integral)]] = Field(
        default_factory=lambda: [0], min_length=1, max_length=5
    )
    training: SweepTraining = Field(default_factory=SweepTraining)
    latency: bool = False

    @field_validator("methods")
    @classmethod
    def _each_method_once(cls, methods: list[str]) -> list[str]:
        repeated = sorted({m for m in methods if methods.count(m) > 1})
        if repeated:
            raise ValueError(f"list each method once; repeated: {', '.join(repeated)}")
        return methods

    @field_validator("strengths")
    @classmethod
    def _retraining_methods_only(cls, strengths: dict[str, Strengths]) -> dict[str, Strengths]:
        unknown = sorted(set(strengths) - RETRAINING)
        if unknown:
            raise ValueError(
                f"no strength grid for {', '.join(unknown)}: strengths take {', '.join(sorted(RETRAINING))}"
            )
        return strengths


class SweepCreate(SweepSpec):
    model_id: str = Field(min_length=1, max_length=40)
    dataset_id: str = Field(min_length=1, max_length=40)


class Progress(BaseModel):
    stage: str | None = None
    fraction: float | None = None
    epoch: int | None = None
    eta_s: float | None = None
    metrics: dict[str, float] = Field(default_factory=dict)


# the stored problem as is: its schema is the API's one Problem (service/problems.py), by reference
StoredProblem = Annotated[
    dict[str, Any] | None,
    WithJsonSchema({"anyOf": [{"$ref": "#/components/schemas/Problem"}, {"type": "null"}]}),
]
ArtifactName = Literal["model.onnx", "report.json", "curve.png", "curve.csv", "curve.json"]


class JobRecord(BaseModel):
    id: str
    kind: Literal["job", "sweep"]
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    model_id: str
    dataset_id: str | None
    spec: CompressionSpec | SweepSpec = Field(description="a compression job's spec, or a sweep's")
    progress: Progress
    error: StoredProblem = Field(description="why the job failed (a problem, as API errors are); else null")
    attempts: int
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    artifacts: list[ArtifactName] = Field(default_factory=list, description="names for /artifacts/{name}")
