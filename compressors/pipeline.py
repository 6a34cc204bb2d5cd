"""One compression end to end, as the job runner and ``modelpress compress`` run it: score the
original, train and cut by a registered method, fine-tune, score the result, measure
latency, and report. Progress goes to one callback, stage by stage; training's own
progress is mapped onto the compress stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from compressors import report as reporting
from compressors.budget import SearchSplit, search
from compressors.errors import DatasetRejected, InvalidSpec, JobCancelled, TrainingDiverged
from compressors.intake.datasets import Dataset
from compressors.intake.loading import LoadedModel
from compressors.methods import Method, get, rule_as_dict, rule_from
from compressors.methods.registry import Weighting
from compressors.onnx import metrics
from compressors.onnx.macs import count_params
from compressors.onnx.quantize import Quantize, quantize_model
from compressors.onnx.ranks import RankRule, Target
from compressors.onnx.result import CompressionResult
from compressors.report import Measurements, Report
from compressors.training.inputs import Hooks, TrainConfig, TrainingData, TrainProgress

SEARCH_SHARE = 0.3  # of the training split, held out for the max_drop search

# where each stage starts, as a fraction of the whole job
STAGES = {
    "load": 0.05,
    "evaluate-original": 0.15,
    "compress": 0.6,
    "quantize": 0.65,
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


@dataclass(frozen=True)
class CompressOptions:
    """What a job asks for beyond a method and a rank rule."""

    weighting: Weighting | None = None  # None: activations when the method truncates by SVD and data is given
    max_drop: float | None = None  # instead of a rule: the largest reduction within this top-1 drop
    quantize: Quantize = "none"  # INT8 on top of the compressed model

    def resolve(self, method: Method, rule: RankRule | None, data: Dataset | None) -> Plan:
        """The rule, weighting and budget this job runs with, or a refusal that says why not."""
        if self.max_drop is not None:
            if rule is not None:
                raise InvalidSpec("give either max_drop or a rank rule (energy, target_*), not both.")
            if data is None:
                raise InvalidSpec("max_drop needs data to measure the drop on: give a dataset.")
            if not 0.0 <= self.max_drop < 1.0:
                raise InvalidSpec(f"max_drop is a share of top-1 in [0, 1); got {self.max_drop}.")
        else:
            rule = rule if rule is not None else rule_from(method.default_rule)
            method.check_rule(rule)
        if self.quantize == "static" and data is None:
            raise InvalidSpec("static quantization calibrates on data: give a dataset, or use dynamic.")
        several = data is not None and len(data.names) > 1
        if several and (
            self.max_drop is not None or self.quantize == "static" or self.weighting == "activations"
        ):
            raise InvalidSpec(
                "max_drop, static quantization and weighting by activations take single-input models "
                "for now; leave them out for this model."
            )
        weighting = method.weighting_for(self.weighting, data is not None and not several)
        return Plan(rule, weighting, self.max_drop, self.quantize)


@dataclass(frozen=True)
class Plan:
    rule: RankRule | None
    weighting: Weighting
    max_drop: float | None
    quantize: Quantize

    @property
    def uses_data(self) -> bool:
        """Whether the data shapes the result (so the report must score on a held-out split)."""
        return self.weighting == "activations" or self.max_drop is not None or self.quantize == "static"


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
    options: CompressOptions = CompressOptions(),
) -> Compressed:
    """Compress ``model`` with ``method`` by ``rule`` (the method's default rule when None).
    ``data`` trains and scores; ``stages`` reports progress and cancels (see ``Stages``);
    ``checkpoint_dir`` keeps per-epoch checkpoints, and a rerun with it resumes; ``options``
    weighs the truncation, searches an accuracy budget and quantizes."""
    chosen, config, stages = get(method), config or TrainConfig(), stages or Stages(None, None)
    plan = options.resolve(chosen, rule, data)
    trains = chosen.retrains or finetune_epochs > 0 or plan.uses_data
    sample = data.sample_shapes if data is not None else None
    output = _scores(model, data, config.output)
    stages.enter("evaluate-original")
    x_eval, y_eval = _evaluation_split(data, trains)
    reference = _reference(model, x_eval, y_eval, output)
    stages.enter("compress")
    progress = _training_progress(stages.notify, config.epochs if chosen.retrains else 0, finetune_epochs)
    hooks = Hooks(progress, stages.should_stop, checkpoint_dir)
    result, search = run_method(model, chosen, plan, data, config, finetune_epochs, hooks)
    quantized = _quantize(stages, result.model, plan.quantize, data)
    final, outputs = _evaluate(stages, result.model, quantized, x_eval, output)
    stages.enter("latency")
    latency = _latencies(evaluation, model, [result.model, final] if quantized else [final], sample)
    stages.finish()
    before, after = _measurements(
        model, result, final, latency, latency[1][-1], reference, outputs[1], y_eval
    )
    staged = _measurements(model, result, result.model, latency, latency[1][0], reference, outputs[0], y_eval)
    return Compressed(
        final,
        Report(
            method=chosen.name,
            rank=rule_as_dict(result_rule(plan, search)),
            model=reporting.model_block(model),
            dataset=reporting.dataset_block(data, x_eval),
            before=before,
            after=after,
            layers=result.layers,
            latency=latency[2],
            stages=stages.seconds,
            seeds={"seed": config.seed},
            training=_training_block(chosen, config, finetune_epochs, result),
            notes=reporting.notes(chosen.sparse, model, data, latency[2]) + result.notes + _notes(plan),
            weighting=plan.weighting,
            search=_search_block(search, outputs[1], reference, y_eval),
            quantize=quantized[1] if quantized else None,
            compressed=staged[1] if quantized else None,
        ),
    )


def _evaluate(
    stages: Stages,
    compressed: onnx.ModelProto,
    quantized: tuple[onnx.ModelProto, dict[str, Any]] | None,
    x_eval: Any,
    output: str | None,
) -> tuple[onnx.ModelProto, list[np.ndarray | None]]:
    """The final model (quantized, when it was) and the outputs of the compressed and the final
    model on the evaluation split."""
    stages.enter("evaluate-compressed")
    final = quantized[0] if quantized else compressed
    models = (compressed, final)
    return final, [metrics.predict(m, x_eval, output=output) if x_eval is not None else None for m in models]


def _training_block(
    method: Method, config: TrainConfig, finetune_epochs: int, result: CompressionResult
) -> dict[str, Any] | None:
    """What training did, per stage, and with what settings; None when nothing was trained."""
    if not result.training:
        return None
    spec = {**asdict(config), "finetune_epochs": finetune_epochs}
    return {"spec": spec, "strength": method.strength_for(config), "stages": result.training}


def result_rule(plan: Plan, search: dict[str, Any] | None) -> RankRule | None:
    """The rule the result was cut by: the given one, or the target the budget search chose."""
    if search is None:
        return plan.rule
    return Target(search["chosen_target"], search["metric"])


def run_method(
    model: LoadedModel,
    method: Method,
    plan: Plan,
    data: Dataset | None,
    config: TrainConfig,
    finetune_epochs: int,
    hooks: Hooks,
) -> tuple[CompressionResult, dict[str, Any] | None]:
    """Train, cut by the plan's rule (or search its budget), and fine-tune ``finetune_epochs``
    when asked; the budget search's record, or None."""
    if (method.retrains or finetune_epochs > 0) and data is None:
        raise InvalidSpec(
            f"{method.name} retrains the model and needs data: give a dataset (digits or an .npz)."
            if method.retrains
            else f"{method.name} with {finetune_epochs} fine-tuning epochs needs data: give a dataset "
            "(digits or an .npz with x, and y when you have labels)."
        )
    split = None
    if plan.max_drop is not None and data is not None:
        data, split = search_split(model, data)
    training = (
        TrainingData(model.proto, data, model.info.inputs[0].name, config.output)
        if data is not None
        else None
    )
    method.check_model(model.proto, plan.rule, training.sample_shapes if training is not None else None)
    trained = method.train(model, training, config, hooks)
    found = None
    if split is not None and plan.max_drop is not None:
        result, found = search(trained, method, plan.weighting, split, plan.max_drop)
    else:
        result = trained.cut(plan.rule, plan.weighting)
    if trained.summary:
        result.training.setdefault("train", trained.summary)
    return finish(result, training, config, finetune_epochs, hooks, method.sparse), found


def search_split(model: LoadedModel, data: Dataset) -> tuple[Dataset, SearchSplit]:
    """Hold a seeded SEARCH_SHARE of the training split out of training and calibration, for
    the budget search to score on: scored on the samples the truncation was fitted to, the
    search would overrate every cut (and the report split stays for the report)."""
    order = np.random.default_rng(0).permutation(len(data.x))
    cut = max(1, round(len(data.x) * SEARCH_SHARE)) if len(data.x) > 1 else 0
    held, kept = np.sort(order[:cut]), np.sort(order[cut:])
    if len(kept) == 0:
        kept = held
    y = data.y
    rest = replace(data, x=data.x[kept], y=None if y is None else y[kept])
    return rest, SearchSplit.of(model.proto, data.x[held], None if y is None else y[held])


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


Latencies = tuple[dict[str, float | None], list[dict[str, float | None]], dict[str, Any]]


def _latencies(
    evaluation: Evaluation, model: LoadedModel, compressed: list[onnx.ModelProto], sample: dict | None
) -> Latencies:
    """The original's latency, and each of ``compressed`` (the compressed model, then the
    quantized one when there is one)."""
    if not evaluation.latency:
        return {}, [{} for _ in compressed], {"measured": False}
    # alternate the models per batch size so machine noise hits them alike
    before: list[metrics.Latency] = []
    after: list[list[metrics.Latency]] = [[] for _ in compressed]
    for batch in evaluation.batches:
        before += metrics.measure_latency(model.proto, (batch,), evaluation.threads, sample)
        for runs, other in zip(after, compressed, strict=True):
            runs += metrics.measure_latency(other, (batch,), evaluation.threads, sample)
    meta = {
        "measured": True,
        "runtime": "onnxruntime CPUExecutionProvider",
        "threads": evaluation.threads,
        "batches": list(evaluation.batches),
        "statistic": "median of repeated runs after 3 warm-up runs",
        "runs": {str(b.batch): [b.runs, *(a[i].runs for a in after)] for i, b in enumerate(before)},
    }
    return (
        {str(b.batch): b.median_ms for b in before},
        [{str(a.batch): a.median_ms for a in runs} for runs in after],
        meta,
    )


def _measurements(
    model: LoadedModel,
    result: CompressionResult,
    final: onnx.ModelProto,
    latency: Latencies,
    latency_after: dict[str, float | None],
    reference: np.ndarray | None,
    outputs: np.ndarray | None,
    labels: np.ndarray | None,
) -> tuple[Measurements, Measurements]:
    """Before (the original) and after (``final``: the compressed model, or it quantized);
    params and MACs are counted on the compressed graph, which quantization does not change."""
    params, nonzeros = count_params(result.model)
    info = model.info
    before = Measurements(info.params, info.nonzeros, result.macs_before, model.file_bytes, latency[0])
    after = Measurements(params, nonzeros, result.macs_after, metrics.saved_size(final), latency_after)
    if reference is not None and outputs is not None:
        if labels is not None:
            before.accuracy = metrics.accuracy(reference, labels)
            after.accuracy = metrics.accuracy(outputs, labels)
        after.fidelity = metrics.fidelity(outputs, reference)
    return before, after


def _quantize(
    stages: Stages, compressed: onnx.ModelProto, mode: Quantize, data: Dataset | None
) -> tuple[onnx.ModelProto, dict[str, Any]] | None:
    if mode == "none":
        return None
    stages.enter("quantize")
    # calibrate on the training split: the report scores on the held-out one
    return quantize_model(compressed, mode, data.x if data is not None else None)


def _search_block(
    search: dict[str, Any] | None,
    outputs: np.ndarray | None,
    reference: np.ndarray | None,
    labels: np.ndarray | None,
) -> dict[str, Any] | None:
    """The budget search's record, with the drop the chosen model shows on the report split."""
    if search is None or outputs is None or reference is None:
        return search
    if labels is not None:
        drop = metrics.accuracy(reference, labels)["top1"] - metrics.accuracy(outputs, labels)["top1"]
    else:
        drop = 1.0 - metrics.fidelity(outputs, reference)["top1_agreement"]
    return {**search, "report_drop": drop, "report_within": drop <= search["max_drop"] + 1e-12}


def _notes(plan: Plan) -> list[str]:
    lines = []
    if plan.weighting == "activations":
        lines.append(
            "Truncation was weighted by activations: each layer keeps the directions that carry "
            "most of its output on the training split (rank.weighting)."
        )
    if plan.max_drop is not None:
        lines.append(
            f"The reduction was searched for the largest within a {plan.max_drop:g} drop, scored on "
            f"{SEARCH_SHARE:.0%} of the training split held out of training and calibration; the "
            "accuracy here is on the report split. Fine-tuning, if any, came after the search."
        )
    if plan.quantize != "none":
        lines.append(
            f"INT8 ({plan.quantize}) on top: 'after' is the quantized model and 'compressed' the model "
            "before quantization; params and MACs count the same graph, in 8 bits instead of 32."
        )
    return lines
