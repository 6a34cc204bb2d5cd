"""Accuracy-versus-compression curves: methods × strengths × targets, with the Pareto front.

Regularized methods train once per strength and are then truncated or pruned at every
target — the cheap way compression-aware training allows. Factorizing and structured
methods are swept over whole-model MACs targets; unstructured ones (l1, prune,
variational) over nonzeros targets, and their MACs ratio is reported as 1.0, which it is.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from compressors.errors import InvalidSpec
from compressors.intake.loading import LoadedModel
from compressors.methods import Method, get
from compressors.onnx import metrics
from compressors.onnx.macs import count_params
from compressors.onnx.ranks import Target
from compressors.onnx.result import CompressionResult
from compressors.pipeline import finish
from compressors.report import strict_json
from compressors.training.inputs import Hooks, TrainConfig, TrainingData

DEFAULT_TARGETS = (0.5, 0.35, 0.25, 0.18, 0.125, 0.09, 0.06)


@dataclass
class Point:
    method: str
    seed: int
    strength: float | None
    target: float
    params_ratio: float  # stored nonzero parameters after / parameters before
    macs_ratio: float
    accuracy: float  # top-1 when labelled, else top-1 agreement with the original
    latency_ratio: float | None = None  # batch-1 onnxruntime latency after / before


@dataclass
class Curve:
    baseline_accuracy: float
    metric: str  # "accuracy" or "agreement"
    points: list[Point] = field(default_factory=list)

    def pareto(self, axis: str) -> list[Point]:
        """Points no other point beats on both ``axis`` (lower) and accuracy (higher)."""
        ordered = sorted(self.points, key=lambda p: (getattr(p, axis), -p.accuracy))
        front: list[Point] = []
        best = -np.inf
        for point in ordered:
            if point.accuracy > best:
                front.append(point)
                best = point.accuracy
        return front

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline_accuracy": self.baseline_accuracy,
            "metric": self.metric,
            "points": [asdict(p) for p in self.points],
            "pareto_params": [asdict(p) for p in self.pareto("params_ratio")],
            "pareto_macs": [asdict(p) for p in self.pareto("macs_ratio")],
        }


@dataclass
class SweepSpec:
    methods: Sequence[str]
    targets: Sequence[float] = DEFAULT_TARGETS
    strengths: dict[str, Sequence[float]] = field(default_factory=dict)  # per method; else its own grid
    seeds: Sequence[int] = (0,)
    config: TrainConfig = field(default_factory=TrainConfig)
    finetune_epochs: int = 0
    latency: bool = False
    ramp: float = 0.0  # nuclear: fraction of training over which λ rises from 0
    prox_every: int | None = None  # nuclear: fixed prox interval (None: adaptive)


def sweep(
    model: LoadedModel,
    training: TrainingData,
    spec: SweepSpec,
    hooks: Hooks | None = None,
    on_point: Callable[[Point], None] | None = None,
) -> Curve:
    hooks = hooks or Hooks()
    methods = [get(name) for name in spec.methods]  # refuses unknown names before any work
    reference = training.teacher_val
    labels = training.data.y_val
    curve = Curve(_score(reference, labels, reference), "accuracy" if labels is not None else "agreement")
    base_latency = _latency(model.proto, training) if spec.latency else None
    for method in methods:
        for seed, strength in _grid(method, spec):
            config = replace(
                spec.config, seed=seed, strength=strength, strength_ramp=spec.ramp, prox_every=spec.prox_every
            )
            trained = method.train(model, training, config, hooks)
            for target in spec.targets:
                try:
                    result = trained.cut(Target(target, method.sweep_metric))
                except InvalidSpec:
                    continue  # a target below what this model can reach
                finish(result, training, config, spec.finetune_epochs, hooks, method.sparse)
                point = _point(method.name, seed, strength, target, model, result, training, base_latency)
                curve.points.append(point)
                if on_point is not None:
                    on_point(point)
    return curve


def _grid(method: Method, spec: SweepSpec) -> list[tuple[int, float | None]]:
    """(seed, strength) pairs: a training-free method runs once, at the first seed."""
    if not method.retrains:
        return [(spec.seeds[0], None)]
    strengths = spec.strengths.get(method.name, method.sweep_strengths)
    return [(seed, strength) for seed in spec.seeds for strength in strengths]


def _point(
    method: str,
    seed: int,
    strength: float | None,
    target: float,
    model: LoadedModel,
    result: CompressionResult,
    training: TrainingData,
    base_latency: float | None,
) -> Point:
    logits = metrics.predict(result.model, training.data.inputs(val=True), output=training.scores)
    _, nonzeros = count_params(result.model)
    return Point(
        method,
        seed,
        strength,
        target,
        nonzeros / model.info.params,
        result.macs_after / max(result.macs_before, 1),
        _score(logits, training.data.y_val, training.teacher_val),
        (_latency(result.model, training) / base_latency) if base_latency else None,
    )


def _score(logits: np.ndarray, labels: np.ndarray | None, reference: np.ndarray) -> float:
    """Top-1 accuracy, or agreement with the original; per position for a language model."""
    logits, labels = metrics.rows_of(logits, labels)
    reference = metrics.rows_of(reference)[0]
    if labels is not None:
        return float((logits.argmax(1) == labels).mean())
    return float((logits.argmax(1) == reference.argmax(1)).mean())


def _latency(model: onnx.ModelProto, training: TrainingData) -> float:
    (result,) = metrics.measure_latency(model, (1,), 1, training.sample_shapes, min_runs=20, max_seconds=0.5)
    return result.median_ms or float("nan")


def write_curve(curve: Curve, out_dir: Path, title: str = "") -> dict[str, Path]:
    """curve.json, curve.csv and curve.png (accuracy vs params ratio and vs MACs ratio)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "curve.json", "csv": out_dir / "curve.csv", "png": out_dir / "curve.png"}
    paths["json"].write_text(strict_json(curve.to_dict()))
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(
            f, fieldnames=list(asdict(curve.points[0]).keys()) if curve.points else ["method"]
        )
        writer.writeheader()
        for point in curve.points:
            writer.writerow(asdict(point))
    plot_curve(curve, paths["png"], title)
    return paths


def plot_curve(curve: Curve, path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    methods = list(dict.fromkeys(p.method for p in curve.points))
    colors = {m: plt.get_cmap("tab10")(i) for i, m in enumerate(methods)}
    for ax, axis, label in (
        (axes[0], "params_ratio", "stored parameters (nonzeros) after / before"),
        (axes[1], "macs_ratio", "MACs after / before"),
    ):
        for method in methods:
            mine = Curve(
                curve.baseline_accuracy, curve.metric, [p for p in curve.points if p.method == method]
            )
            xs = [getattr(p, axis) for p in mine.points]
            ax.scatter(xs, [p.accuracy for p in mine.points], s=12, alpha=0.35, color=colors[method])
            _line(ax, mine.pareto(axis), axis, "-o", ms=3, color=colors[method], label=method)
        _line(ax, curve.pareto(axis), axis, "k--", lw=1, label="Pareto front (all)")
        ax.axhline(curve.baseline_accuracy, color="grey", lw=0.8, ls=":")
        ax.axhline(curve.baseline_accuracy - 0.01, color="red", lw=0.8, ls=":", label="1% below original")
        ax.set_xscale("log")
        ax.set_xlabel(label + " (log)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("top-1 accuracy" if curve.metric == "accuracy" else "top-1 agreement with original")
    low = min([p.accuracy for p in curve.points] + [curve.baseline_accuracy])
    axes[0].set_ylim(max(0.0, min(low, curve.baseline_accuracy - 0.1)), 1.0)
    axes[1].legend(loc="lower right", fontsize=8)
    fig.suptitle(title or "accuracy versus compression")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _line(ax: Any, points: list[Point], axis: str, style: str, **options: Any) -> None:
    ax.plot([getattr(p, axis) for p in points], [p.accuracy for p in points], style, **options)
