"""The job runner: the one place that turns a job spec into compressors calls.

Spec, model file and dataset in; ``model.onnx`` and ``report.json`` out, progress reported
through a callback as it goes. The CLI, the local executor and the Celery worker all call
``run_job`` and differ in nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compressors.errors import DatasetRejected, InvalidSpec, JobCancelled
from compressors.intake.datasets import Dataset, load_dataset
from compressors.intake.loading import Limits, LoadedModel, load_model
from compressors.methods import l1, l2, nuclear, prune, svd, variational
from compressors.onnx import metrics
from compressors.onnx.graph import fixed_batch
from compressors.onnx.macs import count_params
from compressors.onnx.result import CompressionResult
from compressors.report import Measurements, Report
from compressors.training.loop import TrainProgress
from compressors.training.retrain import Hooks, TrainingData, finish
from service.spec import METHODS, RETRAINING, SPARSE, CompressionSpec


@dataclass
class Progress:
    stage: str
    fraction: float  # of the whole job, 0..1
    epoch: int | None = None
    eta_s: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)


ProgressCallback = Callable[[Progress], None]

_STAGES = {
    "load": 0.05,
    "evaluate-original": 0.15,
    "compress": 0.6,
    "evaluate-compressed": 0.75,
    "latency": 0.95,
    "write": 1.0,
}


@dataclass
class JobOutput:
    report: Report
    model_path: Path
    report_path: Path


def run_job(
    spec: CompressionSpec,
    model_path: Path,
    data: str | Path | None,
    workdir: Path,
    out_dir: Path,
    progress: ProgressCallback | None = None,
    limits: Limits = Limits(),
    should_stop: Callable[[], bool] | None = None,
    checkpoint_dir: Path | None = None,
) -> JobOutput:
    """Run one job. ``checkpoint_dir`` holds per-epoch checkpoints; a job re-run with the
    same directory resumes from them."""
    notify = progress or (lambda _p: None)
    stages: dict[str, float] = {}
    clock = time.perf_counter()

    def stage(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        if stages or name != "load":
            previous = list(_STAGES)[list(_STAGES).index(name) - 1]
            stages[previous] = round(now - clock, 4)
        clock = now
        if should_stop is not None and should_stop():
            raise JobCancelled("the job was cancelled.")
        notify(Progress(name, _STAGES[name] - 0.05))

    stage("load")
    model = load_model(Path(model_path), workdir, limits)
    dataset = _dataset(data, model, spec.seed)
    sample = {model.info.inputs[0].name: dataset.sample_shape} if dataset else None

    stage("evaluate-original")
    x_eval, y_eval = _evaluation_split(spec, dataset)
    reference = metrics.predict(model.proto, x_eval) if x_eval is not None else None
    if reference is not None and y_eval is not None and int(y_eval.max()) >= reference.shape[1]:
        raise DatasetRejected(
            f"labels go up to {int(y_eval.max())} but the model has {reference.shape[1]} outputs; "
            "check that the dataset belongs to this model."
        )

    stage("compress")
    hooks = Hooks(_training_progress(spec, notify), should_stop, checkpoint_dir or workdir / "checkpoints")
    result = compress(spec, model, dataset, sample, hooks)
    compressed = result.model

    stage("evaluate-compressed")
    outputs = metrics.predict(compressed, x_eval) if x_eval is not None else None

    stage("latency")
    before_latency, after_latency, latency_meta = _latencies(spec, model, compressed, sample)

    stage("write")
    out_dir.mkdir(parents=True, exist_ok=True)
    model_out = out_dir / "model.onnx"
    file_bytes = metrics.write_model(compressed, model_out)
    params, nonzeros = count_params(compressed)
    before = Measurements(
        model.info.params, model.info.nonzeros, result.macs_before, model.file_bytes, before_latency
    )
    after = Measurements(params, nonzeros, result.macs_after, file_bytes, after_latency)
    if reference is not None and outputs is not None:
        if y_eval is not None:
            before.accuracy = metrics.accuracy(reference, y_eval)
            after.accuracy = metrics.accuracy(outputs, y_eval)
        after.fidelity = metrics.fidelity(outputs, reference)
    stages["write"] = round(time.perf_counter() - clock, 4)
    report = Report(
        method=spec.method,
        rank=spec.rank.as_dict() if spec.rank is not None else None,
        model=_model_block(model),
        dataset=_dataset_block(dataset, x_eval),
        before=before,
        after=after,
        layers=result.layers,
        latency=latency_meta,
        stages=stages,
        seeds={"seed": spec.seed},
        training=_training_block(spec, result) if result.training else None,
        notes=_notes(spec, model, dataset, latency_meta) + result.notes,
    )
    report_path = out_dir / "report.json"
    tmp = report_path.with_suffix(".json.tmp")
    tmp.write_text(report.to_json())
    tmp.replace(report_path)
    notify(Progress("done", 1.0))
    return JobOutput(report, model_out, report_path)


def compress(
    spec: CompressionSpec,
    model: LoadedModel,
    dataset: Dataset | None,
    sample: dict | None,
    hooks: Hooks,
) -> CompressionResult:
    """Dispatch a spec to its method's entry point."""
    method, training_spec = spec.method, spec.training
    rule = spec.rank.rule() if spec.rank is not None else None
    config = training_spec.config()
    finetune_epochs = training_spec.finetune_epochs
    needs_data = method in RETRAINING or finetune_epochs > 0
    if needs_data and dataset is None:
        raise InvalidSpec(
            f"{method} with {finetune_epochs} fine-tuning epochs needs data: give a dataset "
            "(digits or an .npz with x, and y when you have labels)."
            if method not in RETRAINING
            else f"{method} retrains the model and needs data: give a dataset (digits or an .npz)."
        )
    training = TrainingData.build(model.proto, dataset, model.info.inputs[0].name) if needs_data else None
    if method == "svd":
        assert rule is not None
        return finish(svd.compress(model, rule, sample), training, config, finetune_epochs, hooks, False)
    if method == "prune":
        assert rule is not None
        return prune.compress(model, rule, training, config, finetune_epochs, hooks, sample)
    assert training is not None
    strength = spec.strength()
    if method == "nuclear":
        assert rule is not None
        return nuclear.compress(
            model, training, rule, config, strength, finetune_epochs, hooks, ramp=training_spec.strength_ramp
        )
    if method == "l2":
        assert rule is not None
        return l2.compress(model, training, rule, config, strength, finetune_epochs, hooks)
    if method == "l1":
        assert rule is not None
        return l1.compress(model, training, rule, config, strength, finetune_epochs, hooks)
    if method == "group_lasso":
        from compressors.methods import group_lasso

        assert rule is not None
        return group_lasso.compress(model, training, rule, config, strength, finetune_epochs, hooks)
    if method == "variational":
        return variational.compress(model, training, rule, config, strength, finetune_epochs, hooks)
    raise InvalidSpec(f"unknown method {method!r}; choose one of {', '.join(METHODS)}.")


def _training_progress(spec: CompressionSpec, notify: ProgressCallback) -> Callable[[TrainProgress], None]:
    """Map a training stage's own progress onto the job's compress stage (10%..70%)."""
    train_epochs = spec.training.epochs if spec.method in RETRAINING else 0
    tune_epochs = spec.training.finetune_epochs
    total = max(train_epochs + tune_epochs, 1)
    low, high = _STAGES["evaluate-original"], _STAGES["compress"] - 0.05

    def forward(p: TrainProgress) -> None:
        done = p.fraction * train_epochs if p.stage == "train" else train_epochs + p.fraction * tune_epochs
        notify(
            Progress(
                p.stage,
                low + (high - low) * done / total,
                p.epoch,
                p.eta_s,
                {"loss": p.loss, "regularizer": p.regularizer, **p.metrics},
            )
        )

    return forward


def _training_block(spec: CompressionSpec, result: CompressionResult) -> dict[str, Any]:
    return {"spec": spec.training.model_dump(), "strength": spec.strength(), "stages": result.training}


def _evaluation_split(
    spec: CompressionSpec, dataset: Dataset | None
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """What accuracy is measured on: the held-out split whenever anything is trained on the
    rest (so the report never scores a model on its own training data), else every sample."""
    if dataset is None:
        return None, None
    if spec.method in RETRAINING or spec.training.finetune_epochs > 0:
        return dataset.x_val, dataset.y_val
    return dataset.all_inputs()


def _dataset(data: str | Path | None, model: LoadedModel, seed: int) -> Dataset | None:
    if data is None:
        return None
    if len(model.info.inputs) != 1:
        raise DatasetRejected(
            f"the model takes {len(model.info.inputs)} inputs; datasets fit single-input models only."
        )
    return load_dataset(data, model.info.inputs[0], seed)


def _latencies(
    spec: CompressionSpec, model: LoadedModel, compressed: Any, sample: dict | None
) -> tuple[dict[str, float | None], dict[str, float | None], dict[str, Any]]:
    evaluation = spec.evaluation
    if not evaluation.latency:
        return {}, {}, {"measured": False}
    batches = tuple(evaluation.batches)
    # alternate the two models per batch size so machine noise hits both alike
    before, after = [], []
    for batch in batches:
        before += metrics.measure_latency(model.proto, (batch,), evaluation.threads, sample)
        after += metrics.measure_latency(compressed, (batch,), evaluation.threads, sample)
    meta = {
        "measured": True,
        "runtime": "onnxruntime CPUExecutionProvider",
        "threads": evaluation.threads,
        "batches": list(batches),
        "statistic": "median of repeated runs after 3 warm-up runs",
        "runs": {str(b.batch): [b.runs, a.runs] for b, a in zip(before, after, strict=True)},
    }
    return ({str(b.batch): b.median_ms for b in before}, {str(a.batch): a.median_ms for a in after}, meta)


def _model_block(model: LoadedModel) -> dict[str, Any]:
    info = model.info
    return {
        "sha256": model.sha256,
        "file": model.path.name,
        "opset": info.opset,
        "producer": info.producer,
        "inputs": [vars(t) for t in info.inputs],
        "outputs": [vars(t) for t in info.outputs],
    }


def _dataset_block(dataset: Dataset | None, x_eval: np.ndarray | None) -> dict[str, Any] | None:
    if dataset is None or x_eval is None:
        return None
    return {
        "name": dataset.name,
        "sha256": dataset.sha256,
        "evaluated_samples": len(x_eval),
        "labelled": dataset.labelled,
    }


def _notes(
    spec: CompressionSpec, model: LoadedModel, dataset: Dataset | None, latency: dict[str, Any]
) -> list[str]:
    notes = ["MACs are per sample and count Conv, ConvTranspose, Gemm and MatMul only."]
    if spec.method in SPARSE:
        notes.append(
            "Unstructured sparsity: zeros are reported as fewer nonzeros; MACs and latency do not fall "
            "because dense kernels multiply zeros too."
        )
    if latency.get("measured") and fixed_batch(model.proto) is not None:
        notes.append(
            f"The model's batch dimension is fixed at {fixed_batch(model.proto)}; latency at other batch "
            "sizes cannot be measured (export with a dynamic batch to get them)."
        )
    if dataset is not None and not dataset.labelled:
        notes.append(
            "The dataset has no labels: training distilled the original model and the report "
            "gives fidelity, not accuracy."
        )
    skipped = [layer for layer in model.info.layers if not layer.eligible]
    for layer in skipped:
        notes.append(f"{layer.name} ({layer.op}) left as is: {layer.reason}.")
    if dataset is None:
        notes.append("No dataset was given: accuracy and fidelity were not measured.")
    return notes
