"""What ``report.json`` holds, as the OpenAPI document states it (``GET /v1/jobs/{id}/report``).

The report is written by the job runner (``compressors.report.Report``) or the sweep runner, and
served as the file it is; these models describe it for generated clients and are checked against
real reports in ``tests/test_openapi.py``. New keys may appear in a later schema version, so every
object allows more than it lists.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from service.schemas import SweepSpec


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Measurements(_Open):
    """One side of the before/after comparison; MACs are per sample."""

    params: int
    nonzeros: int
    macs: int
    file_bytes: int
    latency_ms: dict[str, float | None] = Field(description="batch size -> median milliseconds")
    accuracy: dict[str, float] | None = Field(description="top1 (and top5) on labelled data")
    fidelity: dict[str, float] | None = Field(description="agreement with the original model")


class LayerRow(_Open):
    name: str
    op: str
    shape: list[int]
    full_rank: int
    rank: int | None = Field(description="rank kept; null when left dense")
    energy_kept: float | None
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    nonzeros_after: int | None = None
    channels: list[int] | None = Field(None, description="(kept, before) output channels: group lasso")


class CompressionReport(_Open):
    """The report of a compression job."""

    schema_version: str
    method: str
    rank: dict[str, Any] | None
    model: dict[str, Any] = Field(description="sha256, file, opset, producer, inputs, outputs")
    dataset: dict[str, Any] | None = Field(description="name, sha256, evaluated samples, labelled")
    before: Measurements
    after: Measurements
    ratios: dict[str, float | None] = Field(description="after / before (0.25 = four times smaller)")
    layers: list[LayerRow]
    latency: dict[str, Any] = Field(description="how latency was measured: runtime, threads, batches")
    stages: dict[str, float] = Field(description="seconds per stage")
    seeds: dict[str, int]
    training: dict[str, Any] | None
    notes: list[str]
    versions: dict[str, str]
    weighting: Literal["activations", "none"] | None = Field(
        None, description="how truncation weighed what it dropped: by activations on the data, or not"
    )
    search: dict[str, Any] | None = Field(
        None,
        description="the max_drop search: max_drop, metric, chosen_target, trace of every cut tried, "
        "and report_drop, the drop on the report split",
    )
    quantize: dict[str, Any] | None = Field(None, description="how INT8 was applied; null when it was not")
    compressed: Measurements | None = Field(
        None, description="the compressed model before quantization (when quantized); after is the final one"
    )


class CurvePoint(_Open):
    method: str
    seed: int
    strength: float | None
    target: float
    params_ratio: float = Field(description="stored nonzero parameters after / parameters before")
    macs_ratio: float
    accuracy: float = Field(description="top-1, or top-1 agreement with the original without labels")
    latency_ratio: float | None = None
    weighting: str = "none"


class SweepReport(_Open):
    """The report of a sweep: every point, and the Pareto fronts on params and on MACs."""

    schema_version: str
    kind: Literal["sweep"]
    model: dict[str, Any]
    dataset: dict[str, Any]
    spec: SweepSpec
    baseline_accuracy: float
    metric: Literal["accuracy", "agreement"]
    points: list[CurvePoint]
    pareto_params: list[CurvePoint]
    pareto_macs: list[CurvePoint]
    versions: dict[str, str]


class JobReport(RootModel[CompressionReport | SweepReport]):
    """report.json: a compression job's report, or a sweep's (``kind: sweep``)."""
