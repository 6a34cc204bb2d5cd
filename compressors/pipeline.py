"""One compression end to end, as the job runner and ``modelpress compress`` run it: score the
original, train and cut by a registered method, fine-tune, score the result, measure
latency, and report. Progress goes to one callback, stage by stage; training's own
progress is mapped onto the compress stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from compressors import report as reporting
from compressors.errors import DatasetRejected, InvalidSpec, JobCancelled, TrainingDiverged
from compressors.intake.datasets import Dataset
from compressors.intake.loading import LoadedModel
from compressors.methods import Method, get, rule_as_dict, rule_from
from compressors.onnx import metrics
from compressors.onnx.macs import count_params
from compressors.onnx.ranks import RankRule
from compressors.onnx.result import CompressionResult
from compressors.report import Measurements, Report
from compressors.training.inputs import Hooks, TrainConfig, TrainingData, TrainProgress

# where each stage starts, as a fraction of the whole job
STAGES = {
    "load": 0.05,
    "evaluate-original": 0.15,
    "compress": 0.6,
    "evaluate-compressed": 0.75,
    "latency": 0.95,
    "write": 1.0,
}


@dataclass
class Progress:
    stage: str
    fraction: float  # of the whole job, 0..1
    epoch: int | None = None
    eta_s: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class Evaluation:
    latency: bool = True  # measure onnxruntime latency before and after
    threads: int = 1  # intra-op threads for latency
    batches: tuple[int, ...] = (1, 32)


@dataclass
class Compressed:
    model: onnx.ModelProto
    report: Report

    def write(self, out_dir: Path) -> tuple[Path, Path]:
        """``model.onnx`` and ``report.json`` in ``out_dir``, each written atomically."""
        return self.write_model(out_dir / "model.onnx"), self.write_report(out_dir / "report.json")

    def write_model(self, path: Path) -> Path:
        """Refuses a model with a NaN or infinite weight: the last line of the divergence
        checks, whatever stage (training, fine-tuning, factorizing) produced it."""
        broken = non_finite_initializers(self.model)
        if broken:
            raise TrainingDiverged(
                f"training diverged: weights {', '.join(broken[:3])} of the compressed model are not "
                "finite; lower lr or strength and try again."
            )
        metrics.write_model(self.model, path)
        return path

    def write_report(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(self.report.to_json())
        tmp.replace(path)
        return path


def non_finite_initializers(model: onnx.ModelProto) -> list[str]:
    """Names of float initializers holding NaN or infinity (external data is not read)."""
    broken = []
    for tensor in model.graph.initializer:
        external = tensor.data_location == onnx.TensorProto.EXTERNAL
        if external or tensor.data_type not in _FLOATS:
            continue
        if not np.isfinite(numpy_helper.to_array(tensor)).all():
            broken.append(tensor.name)
    return broken


_FLOATS = (
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
)


class Stages:
    """Times the stages, announces each as it starts, and stops a cancelled job between them."""

    def __init__(self, progress: ProgressCallback | None, should_stop: Callable[[], bool] | None) -> None:
        self.notify = progress or (lambda _p: None)
        self.should_stop = should_stop
        self.seconds: dict[str, float] = {}
        self.current: str | None = None
        self.clock = time.perf_counter()

    def enter(self, name: str) -> None:
        self.finish()
        self.current = name
        if self.should_stop is not None and self.should_stop():
            raise JobCancelled("the job was cancelled.")
        self.notify(Progress(name, STAGES[name] - 0.05))

    def finish(self) -> dict[str, float]:
        now = time.perf_counter()
        if self.current is not None:
            self.seconds[self.current] = round(now - self.clock, 4)
        self.current, self.clock = None, now
        return self.seconds


def compress(
    model: LoadedModel,
    method: str,
    rule: RankRule | None = None,
    data: Dataset | None = None,
    *,
    config: TrainConfig | None = None,
    finetune_epochs: int = 0,
    evaluation: Evaluation = Evaluation(),
    stages: Stages | None = None,
    checkpoint_dir: Path | None = None,
) -> Compressed:
    """Compress ``model`` with ``method`` by ``rule`` (the method's default rule when None).

    ``data`` trains and scores; ``stages`` reports progress and cancels (see ``Stages``);
    ``checkpoint_dir`` keeps per-epoch checkpoints, and a rerun with it resumes."""
    chosen, config, stages = get(method), config or TrainConfig(), stages or Stages(None, None)
    chosen.check_rule(rule)
    rule = rule if rule is not None else rule_from(chosen.default_rule)
    trains = chosen.retrains or finetune_epochs > 0
    sample = data.sample_shapes if data is not None else None
    output = _scores(model, data, config.output)

    stages.enter("evaluate-original")
    x_eval, y_eval = _evaluation_split(data, trains)
    reference = _reference(model, x_eval, y_eval, output)

    stages.enter("compress")
    progress = _training_progress(stages.notify, config.epochs if chosen.retrains else 0, finetune_epochs)
    hooks = Hooks(progress, stages.should_stop, checkpoint_dir)
    result = run_method(model, chosen, rule, data, config, finetune_epochs, hooks)

    stages.enter("evaluate-compressed")
    outputs = metrics.predict(result.model, x_eval, output=output) if x_eval is not None else None

    stages.enter("latency")
    latency = _latencies(evaluation, model, result.model, sample)
    stages.finish()
    before, after = _measurements(model, result, latency, reference, outputs, y_eval)
    training = {
        "spec": {**asdict(config), "finetune_epochs": finetune_epochs},
        "strength": chosen.strength_for(config),
    }
    return Compressed(
        result.model,
        Report(
            method=chosen.name,
            rank=rule_as_dict(rule),
            model=reporting.model_block(model),
            dataset=reporting.dataset_block(data, x_eval),
            before=before,
            after=after,
            layers=result.layers,
            latency=latency[2],
            stages=stages.seconds,
            seeds={"seed": config.seed},
            training={**training, "stages": result.training} if result.training else None,
            notes=reporting.notes(chosen.sparse, model, data, latency[2]) + result.notes,
        ),
    )


def run_method(
    model: LoadedModel,
    method: Method,
    rule: RankRule | None,
    data: Dataset | None,
    config: TrainConfig,
    finetune_epochs: int,
    hooks: Hooks,
) -> CompressionResult:
    """Train, cut by ``rule``, and fine-tune ``finetune_epochs`` when asked."""
    if (method.retrains or finetune_epochs > 0) and data is None:
        raise InvalidSpec(
            f"{method.name} retrains the model and needs data: give a dataset (digits or an .npz)."
            if method.retrains
            else f"{method.name} with {finetune_epochs} fine-tuning epochs needs data: give a dataset "
            "(digits or an .npz with x, and y when you have labels)."
        )
    training = (
        TrainingData(model.proto, data, model.info.inputs[0].name, config.output)
        if data is not None
        else None
    )
    method.check_model(model.proto, rule, training.sample_shapes if training is not None else None)
    trained = method.train(model, training, config, hooks)
    result = trained.cut(rule)
    if trained.summary:
        result.training.setdefault("train", trained.summary)
    return finish(result, training, config, finetune_epochs, hooks, method.sparse)


def finish(
    result: CompressionResult,
    training: TrainingData | None,
    config: TrainConfig,
    epochs: int,
    hooks: Hooks,
    sparse: bool,
) -> CompressionResult:
    """Fine-tune the compressed model ``epochs`` epochs when asked (and data allows); a
    sparse model keeps its zeros."""
    if epochs > 0 and training is not None:
        from compressors.training.retrain import finetune

        result.model, result.training["finetune"] = finetune(
            result.model, training, config, epochs, hooks, keep_zeros=sparse
        )
    return result


def _training_progress(
    notify: ProgressCallback, train_epochs: int, tune_epochs: int
) -> Callable[[TrainProgress], None]:
    """Map a training stage's own progress onto the job's compress stage (10%..55%)."""
    total = max(train_epochs + tune_epochs, 1)
    low, high = STAGES["evaluate-original"], STAGES["compress"] - 0.05

    def forward(p: TrainProgress) -> None:
        done = p.fraction * train_epochs if p.stage == "train" else train_epochs + p.fraction * tune_epochs
        figures = {"loss": p.loss, "regularizer": p.regularizer, **p.metrics}
        notify(Progress(p.stage, low + (high - low) * done / total, p.epoch, p.eta_s, figures))

    return forward


def _scores(model: LoadedModel, data: Dataset | None, name: str | None) -> str | None:
    """The output whose scores are measured, when there is data to measure them on."""
    from compressors.onnx.outputs import score_output

    return score_output(model.proto, name, data.num_classes) if data is not None else None


def _evaluation_split(
    dataset: Dataset | None, trains: bool
) -> tuple[list[np.ndarray] | None, np.ndarray | None]:
    """What accuracy is measured on: the held-out split whenever anything is trained on the
    rest (so the report never scores a model on its own training data), else every sample."""
    if dataset is None:
        return None, None
    if trains:
        return dataset.inputs(val=True), dataset.y_val
    return dataset.all_inputs()


def _reference(
    model: LoadedModel, x_eval: list[np.ndarray] | None, y_eval: np.ndarray | None, output: str | None
) -> np.ndarray | None:
    """The original model's scores on the evaluation split, checked against the labels."""
    if x_eval is None:
        return None
    reference = metrics.predict(model.proto, x_eval, output=output)
    if y_eval is not None:
        per_position = reference.ndim == 3
        if per_position != (y_eval.ndim == 2) or (per_position and y_eval.shape[1] != reference.shape[1]):
            raise DatasetRejected(
                f"the labels are shaped {tuple(y_eval.shape)} but the output {output!r} gives scores shaped "
                f"{tuple(reference.shape)}: give one label per sample for (N, classes) scores, one per "
                "position (N, seq) for (N, seq, classes)."
            )
        if int(y_eval.max()) >= reference.shape[-1]:
            raise DatasetRejected(
                f"labels go up to {int(y_eval.max())} but the output {output!r} has {reference.shape[-1]} "
                "scores; check that the dataset belongs to this model, or choose another output."
            )
    return reference


Latencies = tuple[dict[str, float | None], dict[str, float | None], dict[str, Any]]


def _latencies(
    evaluation: Evaluation, model: LoadedModel, compressed: onnx.ModelProto, sample: dict | None
) -> Latencies:
    if not evaluation.latency:
        return {}, {}, {"measured": False}
    # alternate the two models per batch size so machine noise hits both alike
    before, after = [], []
    for batch in evaluation.batches:
        before += metrics.measure_latency(model.proto, (batch,), evaluation.threads, sample)
        after += metrics.measure_latency(compressed, (batch,), evaluation.threads, sample)
    meta = {
        "measured": True,
        "runtime": "onnxruntime CPUExecutionProvider",
        "threads": evaluation.threads,
        "batches": list(evaluation.batches),
        "statistic": "median of repeated runs after 3 warm-up runs",
        "runs": {str(b.batch): [b.runs, a.runs] for b, a in zip(before, after, strict=True)},
    }
    return ({str(b.batch): b.median_ms for b in before}, {str(a.batch): a.median_ms for a in after}, meta)


def _measurements(
    model: LoadedModel,
    result: CompressionResult,
    latency: Latencies,
    reference: np.ndarray | None,
    outputs: np.ndarray | None,
    labels: np.ndarray | None,
) -> tuple[Measurements, Measurements]:
    params, nonzeros = count_params(result.model)
    info = model.info
    before = Measurements(info.params, info.nonzeros, result.macs_before, model.file_bytes, latency[0])
    after = Measurements(params, nonzeros, result.macs_after, metrics.saved_size(result.model), latency[1])
    if reference is not None and outputs is not None:
        if labels is not None:
            before.accuracy = metrics.accuracy(reference, labels)
            after.accuracy = metrics.accuracy(outputs, labels)
        after.fidelity = metrics.fidelity(outputs, reference)
    return before, after
