"""Running a sweep job: the curve report (report.json) plus curve.csv, curve.json, curve.png."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from compressors import (
    DEFAULT_TARGETS,
    SCHEMA_VERSION,
    Hooks,
    InvalidSpec,
    Progress,
    SweepSpec,
    TrainConfig,
    TrainingData,
    TrainProgress,
    library_versions,
    load_dataset,
    load_model,
    strict_json,
    sweep,
    write_curve,
)


def run_sweep(
    spec: dict[str, Any],
    model_path: Path,
    data: str | Path | None,
    workdir: Path,
    out_dir: Path,
    progress: Callable[[Progress], None],
    should_stop: Callable[[], bool],
) -> None:
    if data is None:
        raise InvalidSpec("a sweep needs a dataset to measure accuracy on.")
    progress(Progress("load", 0.02))
    model = load_model(model_path, workdir)
    dataset = load_dataset(data, model.info.inputs)
    training = TrainingData.build(model.proto, dataset, model.info.inputs[0].name)
    t = spec["training"]
    sweep_spec = SweepSpec(
        spec["methods"],
        tuple(spec.get("targets") or DEFAULT_TARGETS),
        spec.get("strengths", {}),
        spec["seeds"],
        TrainConfig(epochs=t["epochs"], lr=t["lr"], batch_size=t["batch_size"]),
        t["finetune_epochs"],
        spec.get("latency", False),
    )
    total = max(len(sweep_spec.methods) * len(sweep_spec.targets) * len(sweep_spec.seeds), 1)
    done = [0]

    def on_point(_point: object) -> None:
        done[0] += 1
        progress(Progress("sweep", min(0.95, 0.05 + 0.9 * done[0] / total), metrics={"points": done[0]}))

    def on_train(p: TrainProgress) -> None:
        progress(Progress(p.stage, min(0.95, 0.05 + 0.9 * done[0] / total), p.epoch, p.eta_s))

    curve = sweep(model, training, sweep_spec, Hooks(on_train, should_stop), on_point)
    if not curve.points:
        raise InvalidSpec("no target was reachable for any method; try larger targets.")
    write_curve(curve, out_dir, f"{model_path.name}: accuracy vs compression")
    report = {
        "schema_version": SCHEMA_VERSION,
        "kind": "sweep",
        "model": {"sha256": model.sha256},
        "dataset": {"name": dataset.name, "sha256": dataset.sha256},
        "spec": spec,
        **curve.to_dict(),
        "versions": library_versions(),
    }
    (out_dir / "report.json").write_text(strict_json(report))
    progress(Progress("write", 1.0))
