"""The reviewers' experiment on digits: every method, a grid of strengths and targets, 3 seeds.

    .venv/bin/python bench/review.py            # full run (CPU, ~15 minutes on 2 cores)
    .venv/bin/python bench/review.py --quick    # smoke run
    .venv/bin/python bench/review.py --part weighting   # only the activation-weighted arm (below)

Two models are trained here (seeded) and exported the way users export theirs: the MLP
64-512-512-10 and a small CNN (examples.digits). For each model, method, strength and
seed, the model is trained once with the method's regularizer and then truncated or
pruned at every target (``compressors.curves``); each point is evaluated on the held-out
20% of digits. Writes bench/results/review.json (SPEC schema; every point also names its
model), docs/review.md (per method the largest params and MACs reduction at <= 1% accuracy
drop, mean ± std over seeds, and the with/without-regularizer ablation) and docs/review.png.

``--part weighting`` reruns the with/without-regularizer ablation (svd, l2 λ=2, nuclear λ=5, the
ablation's seeds and targets, 2^(1/4) apart) with every trained model cut twice: truncation by
weight energy and by activations (``rank.weighting``).
It adds ``weighting`` to bench/results/review.json, keeping the rest, and rewrites the
section between the ``<!-- weighting -->`` markers of docs/review.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks_doc import write_marked  # noqa: E402

from compressors.curves import Curve, Point, SweepSpec, plot_curve, sweep  # noqa: E402
from compressors.intake.datasets import load_dataset  # noqa: E402
from compressors.intake.loading import load_model  # noqa: E402
from compressors.methods import get  # noqa: E402
from compressors.onnx import metrics  # noqa: E402
from compressors.onnx.inspection import analysis_shapes  # noqa: E402
from compressors.onnx.lowrank import factorize  # noqa: E402
from compressors.onnx.ranks import Energy  # noqa: E402
from compressors.training.loop import TrainConfig  # noqa: E402
from compressors.training.retrain import Hooks, TrainingData  # noqa: E402
from examples import digits  # noqa: E402

CACHE = ROOT / "bench" / ".cache"
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs"

# MACs (or nonzeros) targets 2^(1/8) ≈ 9% apart, from 0.5 down to 1/64: the reduction a
# method reaches is read off this grid, so its spacing is the resolution of every ratio
# below; it must be well under the 1.25 the goal asks to detect
TARGETS = tuple(round(0.5 * 2 ** (-i / 8), 4) for i in range(41))
# every method gets four strengths, a 1-2-5 series whose top is the first value that cost
# more than a point of accuracy before truncation in a first exploration (seed 0, MLP)
STRENGTHS = {
    "nuclear": (1.0, 2.0, 5.0, 10.0),
    "l2": (1.0, 2.0, 5.0, 10.0),
    "l1": (0.2, 0.5, 1.0, 2.0),
    "group_lasso": (0.5, 1.0, 2.0, 5.0),
    "variational": (0.01, 0.02, 0.05, 0.1),
}
# the nuclear prox runs every 4 steps in the review (not the adaptive interval, which
# follows measured step times and so would make results depend on the machine's load)
PROX_EVERY = 4
LR_SCHEDULE = "cosine"
# ablations, on a subset of the targets: fine-tuning (0 vs 2 epochs after truncation) for
# truncation alone, after l2 and after nuclear; the strength schedule; the truncation rule
ABLATION_TARGETS = tuple(t for t in TARGETS[::2] if t >= 0.03)  # 2^(1/4) apart, 0.5 to 0.03
ABLATION = {"svd": (None,), "l2": (2.0,), "nuclear": (5.0,)}
SCHEDULES = {  # name: (lr schedule, λ ramp)
    "constant lr, constant λ": ("constant", 0.0),
    "cosine lr, constant λ": ("cosine", 0.0),
    "cosine lr, λ ramped over the first half": ("cosine", 0.5),
}
ENERGIES = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
METHODS = ("svd", "prune", "l2", "l1", "group_lasso", "variational", "nuclear")
DROP = 0.01
WEIGHTED = ("svd", "l2", "nuclear")  # the methods whose truncation can be weighted by activations


def build_models(quick: bool) -> dict[str, Path]:
    CACHE.mkdir(parents=True, exist_ok=True)
    built = {}
    for name, module, image in (("mlp", digits.DigitsMLP(), False), ("cnn", digits.DigitsCNN(), True)):
        path = CACHE / f"review_{name}{'_quick' if quick else ''}.onnx"
        if not path.exists():
            accuracy = digits.train_digits(module, image=image, epochs=5 if quick else 30, seed=0)
            digits.export(module, torch.zeros((2, 1, 8, 8) if image else (2, 64)), path)
            print(f"trained {name}: held-out accuracy {accuracy:.4f}", flush=True)
        built[name] = path
    return built


def best_reduction(points: Sequence[Any], baseline: float, axis: str) -> float | None:
    """Largest 1/ratio among points within DROP of the baseline (None when none is)."""
    ok = [getattr(p, axis) for p in points if p.accuracy >= baseline - DROP]
    return 1.0 / min(ok) if ok else None


def summarize(curve: Curve, methods: tuple[str, ...], seeds: list[int]) -> dict[str, dict[str, list[float]]]:
    table: dict[str, dict[str, list[float]]] = {}
    for method in methods:
        row: dict[str, list[float]] = {"params": [], "macs": []}
        for seed in seeds:
            mine = [
                p
                for p in curve.points
                if p.method == method and (p.seed == seed or method in ("svd", "prune"))
            ]
            for axis, key in (("params_ratio", "params"), ("macs_ratio", "macs")):
                found = best_reduction(mine, curve.baseline_accuracy, axis)
                row[key].append(found if found is not None else 1.0)
        table[method] = row
    return table


def fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}x"
    return f"{statistics.mean(values):.2f}x ± {statistics.stdev(values):.2f}"


def run_model(name: str, path: Path, seeds: list[int], epochs: int, quick: bool) -> dict:
    targets = TARGETS[::4] if quick else TARGETS
    ablation_targets = tuple(t for t in targets if t in ABLATION_TARGETS) or targets[-3:]
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(path, Path(tmp))
        data = load_dataset("digits", model.info.inputs[0])
        training = TrainingData.build(model.proto, data, model.info.inputs[0].name)
        config = TrainConfig(epochs=epochs, lr=1e-3, lr_schedule=LR_SCHEDULE)

        def spec(
            methods: tuple[str, ...], at: tuple[float, ...], strengths: dict, **options: Any
        ) -> SweepSpec:
            options = {"config": config, "prox_every": PROX_EVERY, **options}
            return SweepSpec(methods, at, strengths, seeds, **options)

        t0 = time.perf_counter()
        curve = sweep(model, training, spec(METHODS, targets, dict(STRENGTHS)))
        print(f"{name}: {len(curve.points)} points in {time.perf_counter() - t0:.0f} s", flush=True)

        def subset(method: str, strengths: tuple, at: tuple[float, ...]) -> Curve:
            mine = [
                p for p in curve.points if p.method == method and p.strength in strengths and p.target in at
            ]
            return Curve(curve.baseline_accuracy, curve.metric, mine)

        finetuning: dict[str, Curve] = {}
        for method, strengths in ABLATION.items():
            finetuning[f"{method}|0"] = subset(method, strengths, ablation_targets)
            given = {method: strengths} if strengths[0] else {}
            finetuning[f"{method}|2"] = sweep(
                model, training, spec((method,), ablation_targets, given, finetune_epochs=2)
            )
        print(f"{name}: fine-tuning ablation done at {time.perf_counter() - t0:.0f} s", flush=True)

        schedules: dict[str, Curve] = {}
        for label, (lr_schedule, ramp) in SCHEDULES.items():
            for method in ("l2", "nuclear"):
                strengths = ABLATION[method]
                if ramp and method != "nuclear":
                    continue  # λ ramps only for the prox
                if lr_schedule == LR_SCHEDULE and not ramp:
                    schedules[f"{method}|{label}"] = subset(method, strengths, targets)
                    continue
                other = TrainConfig(**{**config.__dict__, "lr_schedule": lr_schedule})
                schedules[f"{method}|{label}"] = sweep(
                    model, training, spec((method,), targets, {method: strengths}, config=other, ramp=ramp)
                )
        print(f"{name}: schedule ablation done at {time.perf_counter() - t0:.0f} s", flush=True)

        truncation: list[dict] = []
        for method, strengths in ABLATION.items():
            for seed in seeds if strengths[0] else seeds[:1]:
                seeded = TrainConfig(**{**config.__dict__, "seed": seed})
                trained = get(method).train(model, training, replace(seeded, strength=strengths[0]), Hooks())
                source = trained.model  # type: ignore[attr-defined]
                shapes, batch = analysis_shapes(source, training.sample_shapes)
                for energy in ENERGIES:
                    result = factorize(source, shapes, Energy(energy), batch)
                    logits = metrics.predict(result.model, data.x_val)
                    truncation.append(
                        {
                            "method": method,
                            "strength": strengths[0],
                            "seed": seed,
                            "energy": energy,
                            "macs_ratio": result.macs_after / max(result.macs_before, 1),
                            "accuracy": float((logits.argmax(1) == data.y_val).mean()),
                        }
                    )
        print(f"{name}: truncation ablation done at {time.perf_counter() - t0:.0f} s", flush=True)
    return {
        "curve": curve,
        "ablation": finetuning,
        "schedules": schedules,
        "truncation": truncation,
        "epochs": epochs,
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--part", choices=["all", "weighting"], default="all")
    args = parser.parse_args()
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    epochs = {"mlp": 3 if args.quick else 20, "cnn": 2 if args.quick else 8}
    started = time.perf_counter()
    if args.part == "weighting":
        weighted = {
            name: run_weighting(name, path, seeds, epochs[name], args.quick)
            for name, path in build_models(args.quick).items()
            if name in args.models.split(",")
        }
        write_weighting(weighted, seeds, time.perf_counter() - started)
        return
    runs = {
        name: run_model(name, path, seeds, epochs[name], args.quick)
        for name, path in build_models(args.quick).items()
        if name in args.models.split(",")
    }
    write_outputs(runs, seeds, time.perf_counter() - started)


def run_weighting(name: str, path: Path, seeds: list[int], epochs: int, quick: bool) -> dict:
    """svd, l2 and nuclear, each trained model cut with and without activation weighting."""
    targets = ABLATION_TARGETS[::3] if quick else ABLATION_TARGETS
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(path, Path(tmp))
        data = load_dataset("digits", model.info.inputs[0])
        training = TrainingData.build(model.proto, data, model.info.inputs[0].name)
        config = TrainConfig(epochs=epochs, lr=1e-3, lr_schedule=LR_SCHEDULE)
        strengths = {m: s for m, s in ABLATION.items() if s[0] is not None}
        spec = SweepSpec(
            WEIGHTED, targets, strengths, seeds, config=config, prox_every=PROX_EVERY,
            weightings=("none", "activations"),
        )  # fmt: skip
        t0 = time.perf_counter()
        curve = sweep(model, training, spec)
        print(
            f"{name}: weighting arm, {len(curve.points)} points in {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
    return {"curve": curve, "epochs": epochs, "seconds": time.perf_counter() - t0}


def write_weighting(runs: dict[str, dict], seeds: list[int], seconds: float) -> None:
    """Merge the weighting arm into review.json and its section of docs/review.md."""
    path = RESULTS / "review.json"
    review = json.loads(path.read_text()) if path.exists() else {}
    # models may run in separate processes: each merges its own into what is saved
    review.setdefault("weighting", {}).update(
        {
            name: {
                "baseline_accuracy": run["curve"].baseline_accuracy,
                "points": [asdict(p) for p in run["curve"].points],
                "seeds": seeds,
                "epochs": run["epochs"],
                "seconds": round(run["seconds"], 1),
            }
            for name, run in runs.items()
        }
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(review, indent=1))
    saved = {
        name: {
            "curve": Curve(run["baseline_accuracy"], "accuracy", [Point(**p) for p in run["points"]]),
            "seconds": run["seconds"],
        }
        for name, run in review["weighting"].items()
    }
    table = render_weighting(saved, seeds, seconds)
    write_marked(DOCS / "review.md", "weighting", table, "\n## Truncation weighted by activations")


def render_weighting(runs: dict[str, dict], seeds: list[int], seconds: float) -> str:
    lines = [
        f"Generated by `bench/review.py --part weighting`, seeds {', '.join(map(str, seeds))}; "
        "points in `bench/results/review.json` under `weighting`.",
        "",
    ]
    for name, run in runs.items():
        curve = run["curve"]
        lines += [
            f"### {name} (baseline accuracy {curve.baseline_accuracy:.4f})",
            "",
            "Largest MACs reduction with accuracy at most 1 point below the original (mean ± std over "
            "seeds; targets 2^(1/4) apart), and the best top-1 at 0.0625 of the MACs over seeds.",
            "",
            "| method | weighting none | weighting activations | top-1 at 0.0625, none → activations |",
            "|---|---|---|---|",
        ]
        best: dict[str, dict[str, float]] = {}
        for method in WEIGHTED:
            cells, at = [], []
            for weighting in ("none", "activations"):
                mine = [p for p in curve.points if p.method == method and p.weighting == weighting]
                row = summarize(Curve(curve.baseline_accuracy, curve.metric, mine), (method,), seeds)
                cells.append(fmt(row[method]["macs"]))
                best.setdefault(weighting, {})[method] = statistics.mean(row[method]["macs"])
                near = [p.accuracy for p in mine if p.target == 0.0625]
                at.append(f"{max(near):.4f}" if near else "n/a")
            lines.append(f"| {_arm(method)} | {cells[0]} | {cells[1]} | {at[0]} → {at[1]} |")
        for weighting in ("none", "activations"):
            other = max(v for m, v in best[weighting].items() if m != "nuclear")
            lines.append(
                f"\nnuclear ÷ best of svd and l2 ({weighting}): **{best[weighting]['nuclear'] / other:.2f}**"
            )
        lines.append("")
    return "\n".join(lines)


def _goal(summary: dict[str, dict[str, list[float]]]) -> tuple[float, str, float]:
    nuclear = statistics.mean(summary["nuclear"]["macs"])
    best_other, value = max(
        ((m, statistics.mean(r["macs"])) for m, r in summary.items() if m != "nuclear"),
        key=lambda item: item[1],
    )
    return nuclear / value, best_other, value


def write_outputs(runs: dict[str, dict], seeds: list[int], seconds: float) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    points = []
    for name, run in runs.items():
        for p in run["curve"].points:
            point = {
                "model": name,
                "method": p.method,
                "seed": p.seed,
                "target": p.target,
                "params_ratio": p.params_ratio,
                "macs_ratio": p.macs_ratio,
                "accuracy": p.accuracy,
            }
            if p.strength is not None:
                point["strength"] = p.strength
            points.append(point)
    first = next(iter(runs.values()))["curve"]
    review = {
        "baseline_accuracy": first.baseline_accuracy,
        "baselines": {name: run["curve"].baseline_accuracy for name, run in runs.items()},
        "points": points,
        "ablation": {
            name: {key: [asdict(p) for p in c.points] for key, c in run["ablation"].items()}
            for name, run in runs.items()
        },
        "schedules": {
            name: {key: [asdict(p) for p in c.points] for key, c in run["schedules"].items()}
            for name, run in runs.items()
        },
        "truncation": {name: run["truncation"] for name, run in runs.items()},
        "protocol": {"prox_every": PROX_EVERY, "lr_schedule": LR_SCHEDULE, "lr": 1e-3, "drop": DROP},
        "seeds": seeds,
        "strengths": STRENGTHS,
        "targets": TARGETS,
        "epochs": {name: run["epochs"] for name, run in runs.items()},
        "seconds": round(seconds, 1),
    }
    (RESULTS / "review.json").write_text(json.dumps(review, indent=1))
    DOCS.mkdir(exist_ok=True)
    for name, run in runs.items():
        plot_curve(
            run["curve"],
            DOCS / f"review_{name}.png",
            f"digits {name}: accuracy vs compression "
            f"(seeds {','.join(map(str, seeds))}; dashed: Pareto front)",
        )
    tables = render_tables(runs, seeds, seconds)
    write_marked(DOCS / "review.md", "tables", tables, "# The reviewers' comparison")


def render_tables(runs: dict[str, dict], seeds: list[int], seconds: float) -> str:
    lines = [
        f"Generated by `bench/review.py` in {seconds / 60:.1f} min on this machine's CPU, seeds "
        f"{', '.join(map(str, seeds))}; raw points in `bench/results/review.json`.",
        "",
    ]
    for name, run in runs.items():
        curve = run["curve"]
        summary = summarize(curve, METHODS, seeds)
        lines += [
            f"### {name} (baseline accuracy {curve.baseline_accuracy:.4f}, {run['epochs']} training "
            f"epochs per strength, {run['seconds'] / 60:.1f} min)",
            "",
            "Largest reduction with accuracy at most 1 point below the original (mean ± std over seeds; "
            "1.00x = no point qualified). Params counts stored nonzeros.",
            "",
            "| method | params reduction | MACs reduction |",
            "|---|---|---|",
        ]
        for method in METHODS:
            lines.append(f"| {method} | {fmt(summary[method]['params'])} | {fmt(summary[method]['macs'])} |")
        ratio, other, value = _goal(summary)
        lines += [
            "",
            f"nuclear ÷ best other MACs reduction ({other}, {value:.2f}x): **{ratio:.2f}** "
            f"(goal ≥ 1.25: {'met' if ratio >= 1.25 else 'missed'}).",
            "",
            f"![{name}](review_{name}.png)",
            "",
            "Fine-tuning ablation: truncation with and without the regularizer, then with 2 "
            f"fine-tuning epochs (MACs targets {min(ABLATION_TARGETS):g} to {max(ABLATION_TARGETS):g}).",
            "",
            "| arm | fine-tune | MACs reduction at ≤1% drop (1.00x: none qualified) "
            "| accuracy at 0.0625 MACs |",
            "|---|---|---|---|",
        ]
        lines += _ablation_rows(run["ablation"], seeds, curve, " epochs")
        lines += [
            "",
            "Schedule ablation: the same strengths trained with a constant or a cosine step size "
            "(the prox threshold is lr·λ, so it follows the step size), and with λ ramped up.",
            "",
            "| arm | schedule | MACs reduction at ≤1% drop | accuracy at 0.0625 MACs |",
            "|---|---|---|---|",
        ]
        lines += _ablation_rows(run["schedules"], seeds, curve)
        lines += [
            "",
            "Truncation-rule ablation: the same trained models cut by a per-layer energy threshold "
            "(keep the fewest singular values holding ≥ e of Σσ² in each layer) instead of the "
            "global MACs budget of the main table (mean over seeds).",
            "",
            "| arm | energy e | MACs after / before | accuracy |",
            "|---|---|---|---|",
        ]
        rows = run["truncation"]
        for method in ABLATION:
            for energy in ENERGIES:
                mine = [r for r in rows if r["method"] == method and r["energy"] == energy]
                if mine:
                    lines.append(
                        f"| {_arm(method)} | {energy:g} | "
                        f"{statistics.mean(r['macs_ratio'] for r in mine):.4f} | "
                        f"{statistics.mean(r['accuracy'] for r in mine):.4f} |"
                    )
        lines += [
            "",
            "Largest MACs reduction at ≤1% drop with an energy rule, against the global budget:",
            "",
        ]
        for method in ABLATION:
            per_seed = []
            for seed in seeds if ABLATION[method][0] else seeds[:1]:
                mine = [SimpleNamespace(**r) for r in rows if r["method"] == method and r["seed"] == seed]
                per_seed.append(best_reduction(mine, curve.baseline_accuracy, "macs_ratio") or 1.0)
            budget = summarize(
                Curve(
                    curve.baseline_accuracy,
                    curve.metric,
                    [p for p in curve.points if p.method == method and p.strength in ABLATION[method]],
                ),
                (method,),
                seeds,
            )[method]["macs"]
            lines.append(f"- {_arm(method)}: energy rule {fmt(per_seed)}, global budget {fmt(budget)}")
        lines.append("")
    return "\n".join(lines)


def _ablation_rows(arms: dict[str, Curve], seeds: list[int], curve: Curve, unit: str = "") -> list[str]:
    """Table rows for arms keyed "method|setting"."""
    rows = []
    for key, points in arms.items():
        method, setting = key.split("|")
        rows.append(f"| {_arm(method)} | {setting}{unit} | {_row(points, method, seeds, curve)} |")
    return rows


def _arm(method: str) -> str:
    strength = ABLATION[method][0]
    return method if strength is None else f"{method} λ={strength:g}"


def _row(points: Curve, method: str, seeds: list[int], curve: Curve) -> str:
    """'reduction ± std | accuracy at 0.0625' for one ablation arm."""
    per_seed = [
        best_reduction(
            [p for p in points.points if p.seed == s or method == "svd"],
            curve.baseline_accuracy,
            "macs_ratio",
        )
        or 1.0
        for s in seeds
    ]
    at = [p.accuracy for p in points.points if p.target == 0.0625]
    return f"{fmt(per_seed)} | {statistics.mean(at):.4f}" if at else f"{fmt(per_seed)} | n/a"


if __name__ == "__main__":
    main()
