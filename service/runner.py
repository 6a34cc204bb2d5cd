"""The job runner: the one place that turns a job spec into compressors calls.

Spec, model file and dataset in; ``model.onnx`` and ``report.json`` out, progress reported
through a callback as it goes. The CLI, the local executor and the Celery worker all call
``run_job`` and differ in nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from compressors import (
    Compressed,
    Dataset,
    DatasetRejected,
    Evaluation,
    Limits,
    LoadedModel,
    Progress,
    Report,
    Stages,
    compress,
    load_dataset,
    load_model,
)
from service.spec import SpecBase

ProgressCallback = Callable[[Progress], None]

__all__ = ["JobOutput", "Progress", "ProgressCallback", "run_job"]


@dataclass
class JobOutput:
    report: Report
    model_path: Path
    report_path: Path


def run_job(
    spec: SpecBase,
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
    stages = Stages(progress, should_stop)
    stages.enter("load")
    model = load_model(Path(model_path), workdir, limits)
    dataset = _dataset(data, model, spec.seed)
    done = compress(
        model,
        spec.method,
        spec.rank.rule() if spec.rank is not None else None,
        dataset,
        config=spec.training.config(),
        finetune_epochs=spec.training.finetune_epochs,
        evaluation=Evaluation(
            spec.evaluation.latency, spec.evaluation.threads, tuple(spec.evaluation.batches)
        ),
        stages=stages,
        checkpoint_dir=checkpoint_dir or workdir / "checkpoints",
    )
    return _write(done, stages, out_dir)


def _write(done: Compressed, stages: Stages, out_dir: Path) -> JobOutput:
    stages.enter("write")
    model_path = done.write_model(out_dir / "model.onnx")
    done.report.stages = stages.finish()
    report_path = done.write_report(out_dir / "report.json")
    stages.notify(Progress("done", 1.0))
    return JobOutput(done.report, model_path, report_path)


def _dataset(data: str | Path | None, model: LoadedModel, seed: int) -> Dataset | None:
    if data is None:
        return None
    dataset = load_dataset(data, model.info.inputs, seed)
    _check_labels(dataset, model)
    return dataset


FLOATS = {"float", "double", "float16", "bfloat16"}


def _check_labels(dataset: Dataset, model: LoadedModel) -> None:
    """Labels of the training and the held-out split alike must name one of the model's
    classes, checked before any work (else training fails deep inside the loss). The widest
    float output with a known last dimension bounds them; a symbolic one checks nothing."""
    widths = [spec.shape[-1] if spec.shape else None for spec in model.info.outputs if spec.dtype in FLOATS]
    if not widths or not all(isinstance(w, int) and w > 0 for w in widths):
        return
    classes = max(w for w in widths if isinstance(w, int))
    for key, labels in (("y", dataset.y), ("y_val", dataset.y_val)):
        if labels is not None and len(labels) and int(labels.max()) >= classes:
            raise DatasetRejected(
                f"'{key}' holds label {int(labels.max())} but the model scores {classes} classes; "
                f"labels must be 0 to {classes - 1}."
            )
