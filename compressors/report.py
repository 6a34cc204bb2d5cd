"""The report: what was done and what it measured, as versioned JSON and as a table."""

from __future__ import annotations

import json
import math
import platform
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any

from compressors.intake.datasets import Dataset
from compressors.intake.loading import LoadedModel
from compressors.onnx.graph import fixed_batch
from compressors.onnx.result import LayerResult

SCHEMA_VERSION = "1.0"


@dataclass
class Measurements:
    """One side of the before/after comparison."""

    params: int
    nonzeros: int
    macs: int  # per sample; unstructured sparsity never lowers this
    file_bytes: int
    latency_ms: dict[str, float | None] = field(default_factory=dict)  # batch -> median ms
    accuracy: dict[str, float] | None = None  # top1 (top5) on labelled data
    fidelity: dict[str, float] | None = None  # agreement with the original model


@dataclass
class Report:
    method: str
    rank: dict[str, float] | None
    model: dict[str, Any]  # sha256, file, opset, inputs, outputs
    dataset: dict[str, Any] | None  # name, sha256, evaluated samples, labelled
    before: Measurements
    after: Measurements
    layers: list[LayerResult]
    latency: dict[str, Any]  # threads, batches, runs, runtime version
    stages: dict[str, float]  # seconds per stage
    seeds: dict[str, int]
    training: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=lambda: library_versions())
    schema_version: str = SCHEMA_VERSION

    @property
    def ratios(self) -> dict[str, float | None]:
        """after / before for each size and speed figure (0.25 = four times smaller)."""
        b, a = self.before, self.after
        ratios: dict[str, float | None] = {
            "params": _ratio(a.params, b.params),
            "nonzeros": _ratio(a.nonzeros, b.nonzeros),
            "macs": _ratio(a.macs, b.macs),
            "file_bytes": _ratio(a.file_bytes, b.file_bytes),
        }
        for batch, ms in b.latency_ms.items():
            ratios[f"latency_b{batch}"] = _ratio(a.latency_ms.get(batch), ms)
        return ratios

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratios"] = self.ratios
        return data

    def to_json(self) -> str:
        return strict_json(self.to_dict())


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None (JSON's null), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def strict_json(value: Any, indent: int | None = 2) -> str:
    """JSON that every parser reads: no bare NaN or Infinity (RFC 8259), null in their place."""
    return json.dumps(finite(value), indent=indent, allow_nan=False)


def _ratio(after: float | None, before: float | None) -> float | None:
    if after is None or not before:
        return None
    return after / before


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in ("modelpress", "onnx", "onnxruntime", "numpy", "torch", "onnx2torch"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


def summary_rows(report: Report) -> list[tuple[str, str, str, str]]:
    """(figure, before, after, after/before) rows for a person to read."""
    b, a, ratios = report.before, report.after, report.ratios

    def num(v: float | None, fmt: str = "{:,}") -> str:
        return "n/a" if v is None else fmt.format(v)

    rows = [
        ("parameters", num(b.params), num(a.params), num(ratios["params"], "{:.3f}")),
        ("nonzeros", num(b.nonzeros), num(a.nonzeros), num(ratios["nonzeros"], "{:.3f}")),
        ("MACs / sample", num(b.macs), num(a.macs), num(ratios["macs"], "{:.3f}")),
        ("file bytes", num(b.file_bytes), num(a.file_bytes), num(ratios["file_bytes"], "{:.3f}")),
    ]
    for batch in b.latency_ms:
        rows.append(
            (
                f"latency ms, batch {batch}",
                num(b.latency_ms[batch], "{:.3f}"),
                num(a.latency_ms.get(batch), "{:.3f}"),
                num(ratios[f"latency_b{batch}"], "{:.3f}"),
            )
        )
    for key in ("top1", "top5"):
        if b.accuracy and key in b.accuracy and a.accuracy:
            rows.append(
                (
                    f"accuracy {key}",
                    f"{b.accuracy[key]:.4f}",
                    f"{a.accuracy[key]:.4f}",
                    f"{a.accuracy[key] - b.accuracy[key]:+.4f}",
                )
            )
    if a.fidelity:
        rows.append(("top-1 agreement", "1.0000", f"{a.fidelity['top1_agreement']:.4f}", ""))
        rows.append(("max |logit diff|", "0", f"{a.fidelity['max_abs_logit_diff']:.4g}", ""))
    return rows


def model_block(model: LoadedModel) -> dict[str, Any]:
    info = model.info
    return {
        "sha256": model.sha256,
        "file": model.path.name,
        "opset": info.opset,
        "producer": info.producer,
        "inputs": [vars(t) for t in info.inputs],
        "outputs": [vars(t) for t in info.outputs],
    }


def dataset_block(dataset: Dataset | None, x_eval: Any) -> dict[str, Any] | None:
    if dataset is None or x_eval is None:
        return None
    return {
        "name": dataset.name,
        "sha256": dataset.sha256,
        "evaluated_samples": len(x_eval[0] if isinstance(x_eval, list) else x_eval),
        "labelled": dataset.labelled,
    }


def notes(sparse: bool, model: LoadedModel, dataset: Dataset | None, latency: dict[str, Any]) -> list[str]:
    """What a reader of the numbers must know: what MACs count, what sparsity does not buy,
    which layers were left alone and why, what was not measured."""
    lines = ["MACs are per sample and count Conv, ConvTranspose, Gemm and MatMul only."]
    if sparse:
        lines.append(
            "Unstructured sparsity: zeros are reported as fewer nonzeros; MACs and latency do not fall "
            "because dense kernels multiply zeros too."
        )
    batch = fixed_batch(model.proto)
    if latency.get("measured") and batch is not None:
        lines.append(
            f"The model's batch dimension is fixed at {batch}; latency at other batch "
            "sizes cannot be measured (export with a dynamic batch to get them)."
        )
    if dataset is not None and not dataset.labelled:
        lines.append(
            "The dataset has no labels: training distilled the original model and the report "
            "gives fidelity, not accuracy."
        )
    lines += [
        f"{layer.name} ({layer.op}) left as is: {layer.reason}."
        for layer in model.info.layers
        if not layer.eligible
    ]
    if dataset is None:
        lines.append("No dataset was given: accuracy and fidelity were not measured.")
    return lines
