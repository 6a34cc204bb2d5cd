"""modelpress against what users would pick instead, side by side on the digits MLP and CNN.

    .venv/bin/python bench/peers.py            # ~15 minutes on 2 busy cores
    .venv/bin/python bench/peers.py --quick    # a smoke run: fewer targets, rounds and epochs

The two digits models (examples.digits: MLP 64-512-512-10, small CNN) are trained here (seed 0,
30 epochs) and exported the way users export theirs; the torch weights are kept so that
torch-pruning starts from the same model. Every accuracy is top-1 on the held-out 20% of
digits (360 images: one image is 0.28 points); modelpress calibrates and searches on the
other 80%. Arms:
- svd truncation by weight energy (``weighting: none``) and by activations, on a grid of MACs
  targets 2^(1/8) apart, no fine-tuning;
- ``max_drop: 0.01`` (the budget search) against the best grid point within 1 point;
- INT8 with onnxruntime alone (dynamic, static) and on top of svd;
- torch-pruning (structured channel pruning, L2 magnitude, uniform per layer) at matched
  MACs, with and without 2 epochs of fine-tuning, against svd(activations) with the same;
- AIMET (spatial SVD, with greedy compression-ratio selection), when a Python with aimet-torch
  is given in AIMET_PYTHON.
Latency: onnxruntime, 1 thread, batch 1 and 32, medians over alternating rounds. Writes
bench/results/peers.json and the tables in docs/peers.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks_doc import write_marked  # noqa: E402

from compressors import CompressOptions, Evaluation, Target, compress, load_dataset, load_model  # noqa: E402
from compressors.intake.datasets import Dataset  # noqa: E402
from compressors.intake.loading import LoadedModel  # noqa: E402
from compressors.methods import get  # noqa: E402
from compressors.onnx import metrics  # noqa: E402
from compressors.onnx.quantize import quantize_model  # noqa: E402
from compressors.training.inputs import Hooks, TrainConfig, TrainingData  # noqa: E402
from examples import digits  # noqa: E402

CACHE = ROOT / "bench" / ".cache"
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs"
# MACs targets 2^(1/8) apart (as bench/review.py) from 0.25 down to 1/32, where both arms leave
# the 1-point band on these models, and 0.5: the resolution of every "largest reduction" below
TARGETS = (0.5, *(round(0.25 * 2 ** (-i / 8), 4) for i in range(25)))
MATCHED = (0.5, 0.25, 0.125)  # MACs points for the side-by-side arms
DROP = 0.01
EPOCHS = 30


def build(name: str) -> tuple[torch.nn.Module, Path]:
    """The trained torch model and its ONNX export, cached."""
    CACHE.mkdir(parents=True, exist_ok=True)
    image = name == "cnn"
    module = digits.DigitsCNN() if image else digits.DigitsMLP()
    weights, path = CACHE / f"peers_{name}.pt", CACHE / f"peers_{name}.onnx"
    if weights.exists() and path.exists():
        module.load_state_dict(torch.load(weights, weights_only=True))
    else:
        accuracy = digits.train_digits(module, image=image, epochs=EPOCHS, seed=0)
        torch.save(module.state_dict(), weights)
        digits.export(module, example(image), path)
        print(f"trained {name}: held-out accuracy {accuracy:.4f}", flush=True)
    return module.eval(), path


def example(image: bool) -> torch.Tensor:
    return torch.zeros((2, 1, 8, 8) if image else (2, 64))


def top1(model: onnx.ModelProto, data: Dataset) -> float:
    return float((metrics.predict(model, data.x_val).argmax(1) == data.y_val).mean())


def weighting_curves(loaded: LoadedModel, data: Dataset, targets: tuple[float, ...]) -> dict[str, list]:
    """svd at every target, truncated by weight energy and by activations."""
    training = TrainingData(loaded.proto, data, loaded.info.inputs[0].name)
    trained = get("svd").train(loaded, training, TrainConfig(), Hooks())
    curves: dict[str, list] = {}
    for weighting in ("none", "activations"):
        points = []
        for target in targets:
            t0 = time.perf_counter()
            result = trained.cut(Target(target, "macs"), weighting)  # type: ignore[arg-type]
            points.append(
                {
                    "target": target,
                    "macs_ratio": result.macs_after / result.macs_before,
                    "accuracy": top1(result.model, data),
                    "seconds": round(time.perf_counter() - t0, 3),
                }
            )
        curves[weighting] = points
    return curves


def best_within(points: list[dict], baseline: float) -> dict | None:
    """The point with the smallest MACs ratio whose accuracy is within DROP of the baseline."""
    ok = [p for p in points if p["accuracy"] >= baseline - DROP - 1e-9]
    return min(ok, key=lambda p: p["macs_ratio"]) if ok else None


def at_target(points: list[dict], target: float) -> dict:
    return min(points, key=lambda p: abs(p["target"] - target))


def budget(loaded: LoadedModel, data: Dataset) -> tuple[dict, onnx.ModelProto]:
    """``max_drop: 0.01`` through the library's front door, as a job runs it."""
    t0 = time.perf_counter()
    done = compress(
        loaded,
        "svd",
        None,
        data,
        evaluation=Evaluation(latency=False),
        options=CompressOptions(max_drop=DROP),
    )
    report = done.report
    assert report.search is not None and report.after.accuracy is not None
    return {
        "chosen_target": report.search["chosen_target"],
        "macs_ratio": report.after.macs / report.before.macs,
        "accuracy": report.after.accuracy["top1"],
        "report_drop": report.search["report_drop"],
        "cuts_tried": len(report.search["trace"]),
        "seconds": round(time.perf_counter() - t0, 2),
        "weighting": report.weighting,
    }, done.model


def alternating_latency(models: dict[str, onnx.ModelProto], rounds: int) -> dict[str, dict[str, float]]:
    """Median ms at batch 1 and 32 per model, over ``rounds`` rounds that visit every model in turn."""
    runs: dict[str, dict[str, list[float]]] = {name: {"1": [], "32": []} for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            for lat in metrics.measure_latency(model, (1, 32), 1, max_seconds=0.3):
                runs[name][str(lat.batch)].append(lat.median_ms or float("nan"))
    return {name: {b: statistics.median(v) for b, v in per.items()} for name, per in runs.items()}


def int8_arms(
    loaded: LoadedModel, data: Dataset, svd_model: onnx.ModelProto, rounds: int
) -> dict[str, dict[str, Any]]:
    """Original, onnxruntime INT8 alone, svd alone and svd + INT8: size, accuracy, latency."""
    models = {
        "original": loaded.proto,
        "ort dynamic": quantize_model(loaded.proto, "dynamic")[0],
        "ort static": quantize_model(loaded.proto, "static", data.x)[0],
        "svd(act)": svd_model,
        "svd(act) + dynamic": quantize_model(svd_model, "dynamic")[0],
        "svd(act) + static": quantize_model(svd_model, "static", data.x)[0],
    }
    latency = alternating_latency(models, rounds)
    base = latency["original"]
    rows = {}
    for name, model in models.items():
        rows[name] = {
            "file_bytes": model.ByteSize(),
            "size_ratio": model.ByteSize() / loaded.proto.ByteSize(),
            "accuracy": top1(model, data),
            "latency_ms": latency[name],
            "throughput_b32": base["32"] / latency[name]["32"],
            "speed_b1": base["1"] / latency[name]["1"],
        }
    return rows


def finetune_torch(module: torch.nn.Module, data: Dataset, epochs: int) -> None:
    """Adam, lr 1e-3, batch 64 on the training split: modelpress's fine-tuning defaults."""
    torch.manual_seed(0)
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)  # type: ignore[arg-type]
    digits.fit(module, x, y, epochs)


def torch_pruned(module: torch.nn.Module, image: bool, target: float) -> tuple[torch.nn.Module, float]:
    """torch-pruning's MagnitudePruner (L2, uniform ratio per layer, classifier kept), its ratio
    bisected until the MACs ratio (torch-pruning's own count) meets ``target``."""
    import torch_pruning as tp

    inputs = example(image)[:1]
    base, _ = tp.utils.count_ops_and_params(module, inputs)

    def prune(ratio: float) -> tuple[torch.nn.Module, float]:
        pruned = copy.deepcopy(module)
        last = [m for m in pruned.modules() if isinstance(m, torch.nn.Linear)][-1]
        pruner = tp.pruner.MagnitudePruner(
            pruned, inputs, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
            ignored_layers=[last],
        )  # fmt: skip
        pruner.step()
        macs, _ = tp.utils.count_ops_and_params(pruned, inputs)
        return pruned, macs / base

    low, high = 0.0, 0.99
    best = prune(high)
    for _ in range(14):
        middle = (low + high) / 2
        pruned, ratio = prune(middle)
        if ratio <= target:
            high, best = middle, (pruned, ratio)
        else:
            low = middle
    return best


def matched_arms(
    name: str, module: torch.nn.Module, loaded: LoadedModel, data: Dataset, tmp: Path, quick: bool
) -> list[dict]:
    """torch-pruning vs svd(activations) at the same MACs, with 0 and 2 fine-tuning epochs."""
    image = name == "cnn"
    rows = []
    for target in MATCHED:
        pruned, _ = torch_pruned(module, image, target)
        for epochs in (0, 2):
            tuned = copy.deepcopy(pruned)
            if epochs:
                finetune_torch(tuned, data, epochs)
            path = digits.export(tuned, example(image), tmp / f"tp_{name}_{target}_{epochs}.onnx")
            exported = load_model(path, tmp / f"tp_{name}_{target}_{epochs}")
            rows.append(
                {"arm": "torch-pruning", "target": target, "finetune_epochs": epochs,
                 "macs_ratio": exported.info.macs / loaded.info.macs, "accuracy": top1(exported.proto, data)}
            )  # fmt: skip
            done = compress(
                loaded, "svd", Target(target, "macs"), data, finetune_epochs=epochs,
                evaluation=Evaluation(latency=False), options=CompressOptions(weighting="activations"),
            )  # fmt: skip
            rows.append(
                {"arm": "svd(activations)", "target": target, "finetune_epochs": epochs,
                 "macs_ratio": done.report.after.macs / done.report.before.macs,
                 "accuracy": top1(done.model, data)}
            )  # fmt: skip
    return rows


def run_model(name: str, rounds: int, quick: bool) -> dict[str, Any]:
    module, path = build(name)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        loaded = load_model(path, Path(tmp) / "model")
        data = load_dataset("digits", loaded.info.inputs[0])
        baseline = top1(loaded.proto, data)
        run: dict[str, Any] = {"baseline": baseline, "macs": loaded.info.macs}
        run["curves"] = weighting_curves(loaded, data, TARGETS[::4] if quick else TARGETS)
        save_partial(name, run, started)
        run["budget"], svd_model = budget(loaded, data)
        save_partial(name, run, started)
        run["int8"] = int8_arms(loaded, data, svd_model, rounds)
        save_partial(name, run, started)
        run["matched"] = matched_arms(name, module, loaded, data, Path(tmp), quick)
        save_partial(name, run, started)
    return run


def save_partial(name: str, run: dict[str, Any], started: float) -> None:
    """Merge what one model has measured so far into peers.json (a long run may be stopped)."""
    run["seconds"] = round(time.perf_counter() - started, 1)
    run["summary"] = summary(run)
    path = RESULTS / "peers.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    saved.setdefault("runs", {})[name] = run
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(saved, indent=1, default=float))
    print(
        f"{name}: {sorted(run)} at {run['seconds']:.0f} s: {json.dumps(run['summary'], default=str)}",
        flush=True,
    )


def summary(run: dict[str, Any]) -> dict[str, Any]:
    """The figures the Done-when list asks for, read off one model's run."""
    base, curves = run["baseline"], run["curves"]
    best = {arm: best_within(points, base) for arm, points in curves.items()}
    reduction = {arm: (1 / p["macs_ratio"] if p else 1.0) for arm, p in best.items()}
    found: dict[str, Any] = {
        "accuracy_at_0.125": {arm: at_target(points, 0.125)["accuracy"] for arm, points in curves.items()},
        "best_within_1pt": best,
        "reduction_within_1pt": reduction,
        "activations_over_plain": reduction["activations"] / reduction["none"],
    }
    if "budget" in run:
        found["budget_over_best_grid"] = 1 / run["budget"]["macs_ratio"] / reduction["activations"]
        found["budget_within_1pt_on_report_split"] = run["budget"]["accuracy"] >= base - DROP - 1e-9
    if "int8" in run:
        int8 = run["int8"]["svd(act) + static"]
        found["svd_static_size_ratio"] = int8["size_ratio"]
        found["svd_static_throughput_b32"] = int8["throughput_b32"]
        found["svd_static_drop"] = base - int8["accuracy"]
        found["static_vs_fp32_b32"] = run["int8"]["ort static"]["throughput_b32"]
        found["static_vs_fp32_b1"] = run["int8"]["ort static"]["speed_b1"]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default="mlp,cnn", help="comma-separated; empty: only re-render")
    parser.add_argument(
        "--aimet", choices=["run", "keep"], default="run", help="keep: reuse the AIMET rows already saved"
    )
    parser.add_argument("--aimet-models", help="the models AIMET compresses (default: --models)")
    args = parser.parse_args()
    rounds = 3 if args.quick else 7
    started = time.perf_counter()
    names = [name for name in args.models.split(",") if name]
    runs = {name: run_model(name, rounds, args.quick) for name in names}
    # models may run in separate processes (one each, side by side); results merge by model
    path = RESULTS / "peers.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    aimet_names = args.aimet_models.split(",") if args.aimet_models else names
    kept = previous.get("aimet", {"ran": False, "why": "not run"})
    aimet = run_aimet(aimet_names) if args.aimet == "run" else kept
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"runs": {**previous.get("runs", {}), **runs}, "aimet": aimet, "drop": DROP, "targets": TARGETS,
              "rounds": rounds, "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
    path.write_text(json.dumps(result, indent=1, default=float))
    tables = render(result)
    write_marked(DOCS / "peers.md", "tables", tables, "# modelpress and its peers")


def run_aimet(names: list[str]) -> dict[str, Any]:
    """AIMET's arm runs in its own Python (AIMET_PYTHON), when one is given: bench/peers_aimet.py."""
    import os
    import subprocess

    python = os.environ.get("AIMET_PYTHON")
    if not python or not names:
        return {"ran": False, "why": "AIMET_PYTHON not set"}
    script = ROOT / "bench" / "peers_aimet.py"
    with tempfile.TemporaryDirectory() as cwd:  # AIMET writes its selection tables to ./data
        done = subprocess.run(
            [python, str(script), str(CACHE), ",".join(names)],
            capture_output=True,
            text=True,
            timeout=3600,
            cwd=cwd,
        )
    if done.returncode != 0:
        return {"ran": False, "why": done.stderr.strip().splitlines()[-1:] or ["failed"]}
    return {"ran": True, **json.loads(done.stdout.strip().splitlines()[-1])}


Row = Callable[[dict[str, Any]], str]


def render(result: dict[str, Any]) -> str:
    lines = [
        "Generated by `bench/peers.py` on this machine's CPU "
        f"(raw figures: `bench/results/peers.json`). Top-1 on the held-out 360 digits; latency "
        f"medians over {result.get('rounds', 7)} alternating rounds, onnxruntime, 1 thread.",
        "",
    ]
    for name, run in result["runs"].items():
        lines += render_model(name, run)
    aimet = result["aimet"]
    lines += ["### AIMET", ""]
    if aimet.get("ran"):
        lines += [f"| model | {' | '.join(aimet['columns'])} |", "|---" * (len(aimet["columns"]) + 1) + "|"]
        lines += [f"| {row[0]} | {' | '.join(map(str, row[1:]))} |" for row in aimet["rows"]]
    else:
        lines.append(f"Not run: {aimet['why']}.")
    return "\n".join(lines)


def render_model(name: str, run: dict[str, Any]) -> list[str]:
    s, base = run["summary"], run["baseline"]

    def pt(p: dict | None) -> str:
        return "none" if p is None else f"{1 / p['macs_ratio']:.1f}× ({p['accuracy']:.4f})"

    lines = [
        f"### digits {name} (baseline top-1 {base:.4f}; {run['seconds'] / 60:.1f} min)",
        "",
        "| svd truncation | top-1 at 0.125 MACs | largest MACs reduction within 1 point (top-1) |",
        "|---|---|---|",
    ]
    for arm in ("none", "activations"):
        lines.append(
            f"| weighting {arm} | {s['accuracy_at_0.125'][arm]:.4f} | {pt(s['best_within_1pt'][arm])} |"
        )
    lines += [
        "",
        f"Activations over plain, largest reduction within 1 point: **{s['activations_over_plain']:.2f}×**.",
        "",
    ]
    if "budget" not in run:
        return [*lines, "(The run stopped here: the budget, INT8 and matched-MACs arms did not run.)", ""]
    b = run["budget"]
    lines += [
        f"`max_drop: 0.01` chose target {b['chosen_target']:.4f} after {b['cuts_tried']} cuts "
        f"({b['seconds']:.1f} s): {1 / b['macs_ratio']:.1f}× fewer MACs, top-1 {b['accuracy']:.4f} on the "
        f"report split (drop {b['report_drop']:+.4f}); that is **{s['budget_over_best_grid']:.2f}** of the "
        "best grid point's reduction.",
        "",
        "| arm | file size | top-1 | batch-1 speed-up | batch-32 throughput |",
        "|---|---|---|---|---|",
    ]
    if "int8" not in run:
        return [*lines, "(The run stopped here.)", ""]
    for arm, row in run["int8"].items():
        lines.append(
            f"| {arm} | {row['size_ratio']:.3f} | {row['accuracy']:.4f} | {row['speed_b1']:.2f}× | "
            f"{row['throughput_b32']:.2f}× |"
        )
    if "matched" not in run:
        return [*lines, "", "(The run stopped here: the matched-MACs arms did not run.)", ""]
    lines += [
        "",
        "Matched MACs: torch-pruning (channels, L2 magnitude) against svd(activations), with and "
        "without 2 epochs of fine-tuning.",
        "",
        "| target | fine-tune | torch-pruning MACs / top-1 | svd(activations) MACs / top-1 |",
        "|---|---|---|---|",
    ]
    for target in MATCHED:
        for epochs in (0, 2):
            cells = [
                f"{r['macs_ratio']:.3f} / {r['accuracy']:.4f}"
                for arm in ("torch-pruning", "svd(activations)")
                for r in run["matched"]
                if r["arm"] == arm and r["target"] == target and r["finetune_epochs"] == epochs
            ]
            lines.append(f"| {target:g} | {epochs} | {' | '.join(cells)} |")
    return [*lines, ""]


if __name__ == "__main__":
    main()
