"""Training-overhead benchmark: how much slower is ``nuclear`` training than plain fine-tuning?

Goal: seconds per epoch of training with ``NuclearProx`` (nuclear-norm proximal steps, default
adaptive prox interval, which aims at <= 10% prox time) divided by seconds per epoch of plain
fine-tuning is at most 1.25, on both models, on CPU.

Both arms call the shared loop ``compressors.training.train`` with the same ``TrainConfig``
(same seed, so the same batches in the same order) on fresh, identical copies of the same
module; the only difference is ``regularizer=NuclearProx(module, views, strength)``. The arms
alternate (plain, nuclear, plain, nuclear, ...) for several repetitions, so the noise of this
shared machine hits both alike; the headline ratio is median(nuclear s/epoch) / median(plain
s/epoch), where s/epoch is the wall time of one ``train`` call over its epochs.

Models (random or briefly trained weights, never downloaded), each exported the way users
export theirs (``examples.digits.export``, dynamo, dynamic batch) into ``bench/.cache/``, then
loaded with ``compressors.intake.loading.load_model`` and converted with
``compressors.training.retrain.trainable_with_views`` (onnx2torch), so the product path is measured:

1. ``digits-cnn``: ``examples.digits.DigitsCNN`` trained for a few epochs on scikit-learn's
   bundled digits (1797 images of 1x8x8), then fine-tuned on all of them.
2. ``resnet18``: torchvision ``resnet18(weights=None, num_classes=10)`` on synthetic data
   (random 3x32x32 images with random labels; speed does not depend on the values).

Beside the ratio it records what explains it: the prox interval the adaptive rule chose, the
time of one full prox over all regularized layers against one training step, and, measured
inside the nuclear runs, the time spent in prox calls and in ``NuclearProx.stats()`` (which
``train`` calls once per epoch for the history).

torch runs with 1 intra-op thread by default (``--threads``): on a 2-core machine shared with
other work, a multi-threaded kernel that loses a core to another process slows down many-fold
and erratically, which drowns the comparison.

Results go to ``bench/results/train_overhead.json`` and the "Training overhead" section of
``docs/benchmarks.md``. ``--quick`` is a smoke run (fewer samples, epochs and repetitions)
that writes ``bench/.cache/train_overhead.quick.json`` and leaves the committed results alone;
``--render-only`` rewrites the docs section from the saved JSON.

    .venv/bin/python bench/train_overhead.py [--quick] [--threads N] [--render-only]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from benchmarks_doc import add_render_only, environment, markdown_table, render_only, save_results
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # examples/, when run as a script
from compressors.intake.loading import load_model
from compressors.report import library_versions
from compressors.training.loop import TrainConfig, TrainProgress, train
from compressors.training.prox import NuclearProx
from compressors.training.retrain import trainable_with_views
from compressors.training.views import WeightView
from examples import digits

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache" / "train_overhead"
RESULTS = ROOT / "bench" / "results" / "train_overhead.json"
QUICK_RESULTS = ROOT / "bench" / ".cache" / "train_overhead.quick.json"
SECTION = "## Training overhead (bench/train_overhead.py)"

GOAL = 1.25  # nuclear s/epoch ÷ plain s/epoch, at most
STRENGTH = 1.0  # λ, the middle of the sweep's default nuclear strengths (0.3, 1, 3)


@dataclass(frozen=True)
class Subject:
    name: str
    description: str
    samples: int
    epochs: int  # per train() call
    batch_size: int
    repetitions: int  # (plain, nuclear) pairs


@dataclass
class Prepared:
    module: nn.Module  # the converted model; each arm trains a deep copy
    views: list[WeightView]
    x: np.ndarray
    y: np.ndarray
    parameters: int
    prepare_seconds: dict[str, float]


def log(message: str) -> None:
    print(message, flush=True)


def subjects(quick: bool) -> list[Subject]:
    if quick:
        return [
            Subject("digits-cnn", "examples.digits.DigitsCNN, sklearn digits", 1797, 2, 64, 2),
            Subject("resnet18", "torchvision resnet18, 10 classes, synthetic 3×32×32", 128, 1, 64, 1),
        ]
    return [
        Subject("digits-cnn", "examples.digits.DigitsCNN, sklearn digits", 1797, 5, 64, 7),
        Subject("resnet18", "torchvision resnet18, 10 classes, synthetic 3×32×32", 512, 3, 64, 5),
    ]


# --- models -----------------------------------------------------------------------------------


def export_digits(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Digits images and labels; exports a briefly trained DigitsCNN to ``path`` when absent."""
    x, y = digits.digits_arrays(image=True)
    if not path.exists():
        torch.manual_seed(0)
        model = digits.DigitsCNN()
        accuracy = digits.train_digits(model, image=True, epochs=3)
        log(f"  trained DigitsCNN for 3 epochs (held-out accuracy {accuracy:.3f}); exporting")
        digits.export(model, torch.zeros(1, 1, 8, 8), path)
    return np.ascontiguousarray(x), y


def export_resnet(path: Path, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic images and labels; exports a seeded random resnet18 to ``path`` when absent."""
    if not path.exists():
        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None, num_classes=10)
        log("  exporting resnet18 (random weights)")
        digits.export(model, torch.zeros(1, 3, 32, 32), path)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((samples, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, samples).astype(np.int64)
    return x, y


def prepare(subject: Subject) -> Prepared:
    """Export (cached), load through the sandbox, convert: the product path to a trainable module."""
    started = time.perf_counter()
    path = CACHE / f"{subject.name}.onnx"
    if subject.name == "digits-cnn":
        x, y = export_digits(path)
        x, y = x[: subject.samples], y[: subject.samples]
    else:
        x, y = export_resnet(path, subject.samples)
    exported = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="train-overhead-") as tmp:
        loaded = load_model(path, Path(tmp))
    loaded_at = time.perf_counter()
    trainable, views = trainable_with_views(loaded.proto, {"x": tuple(x.shape[1:])})
    converted = time.perf_counter()
    return Prepared(
        trainable.module,
        views,
        x,
        y,
        sum(p.numel() for p in trainable.module.parameters()),
        {
            "export_s": exported - started,
            "load_s": loaded_at - exported,
            "convert_s": converted - loaded_at,
        },
    )


# --- measuring ----------------------------------------------------------------------------------


class Instrumented:
    """Counts and times a NuclearProx's prox and stats calls inside ``train``, leaving them as is."""

    def __init__(self, regularizer: NuclearProx) -> None:
        self.prox_calls = 0
        self.prox_seconds = 0.0
        self.prox_cpu_seconds = 0.0
        self.stats_calls = 0
        self.stats_seconds = 0.0
        self.stats_cpu_seconds = 0.0
        self.intervals: list[int] = []  # regularizer.every after each epoch
        prox, stats = regularizer.prox, regularizer.stats

        def timed_prox(tau: float) -> None:
            start, cpu = time.perf_counter(), time.process_time()
            prox(tau)
            self.prox_seconds += time.perf_counter() - start
            self.prox_cpu_seconds += time.process_time() - cpu
            self.prox_calls += 1

        def timed_stats() -> dict[str, float]:
            start, cpu = time.perf_counter(), time.process_time()
            out = stats()
            self.stats_seconds += time.perf_counter() - start
            self.stats_cpu_seconds += time.process_time() - cpu
            self.stats_calls += 1
            self.intervals.append(regularizer.every)
            return out

        regularizer.prox = timed_prox  # type: ignore[method-assign]
        regularizer.stats = timed_stats  # type: ignore[method-assign]


def epoch_clock() -> tuple[list[float], Callable[[TrainProgress], None]]:
    """A progress callback recording the time each epoch ends (its last call per epoch)."""
    ends: list[float] = []

    def progress(p: TrainProgress) -> None:
        if p.metrics:  # the end-of-epoch report, after the regularizer's stats
            ends.append(time.perf_counter())

    return ends, progress


def run_arm(prepared: Prepared, config: TrainConfig, nuclear: bool) -> dict[str, Any]:
    """One train() call on a fresh copy; wall seconds, per-epoch seconds and what the prox did."""
    module = copy.deepcopy(prepared.module)
    regularizer = NuclearProx(module, prepared.views, STRENGTH) if nuclear else None
    probe = Instrumented(regularizer) if regularizer is not None else None
    ends, progress = epoch_clock()
    start, cpu = time.perf_counter(), time.process_time()
    result = train(module, prepared.x, prepared.y, config, regularizer=regularizer, progress=progress)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu
    marks = [start, *ends]
    run: dict[str, Any] = {
        "seconds": seconds,
        "seconds_per_epoch": seconds / config.epochs,
        "cpu_seconds_per_epoch": cpu_seconds / config.epochs,  # process CPU time: robust to load
        "epoch_seconds": [b - a for a, b in itertools.pairwise(marks)],
        "steps": result.steps,
        "final_loss": result.history[-1]["loss"],
    }
    if regularizer is not None and probe is not None:
        step_times = regularizer._step_times[-20:]
        run |= {
            "prox_every": regularizer.every,
            "prox_every_per_epoch": probe.intervals,
            "prox_calls": probe.prox_calls,
            "prox_seconds_in_run": probe.prox_seconds,
            "prox_cpu_seconds_in_run": probe.prox_cpu_seconds,
            "stats_calls": probe.stats_calls,
            "stats_seconds_in_run": probe.stats_seconds,
            "stats_cpu_seconds_in_run": probe.stats_cpu_seconds,
            "rule_step_seconds": sorted(step_times)[len(step_times) // 2],  # what the rule divided by
        }
    return run


def time_prox(prepared: Prepared, config: TrainConfig, every: int, repeats: int) -> dict[str, Any]:
    """One full prox over all regularized layers (median of ``repeats``), and one stats() call."""
    module = copy.deepcopy(prepared.module)
    regularizer = NuclearProx(module, prepared.views, STRENGTH)
    tau = config.lr * STRENGTH * every
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        regularizer.prox(tau)
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    regularizer.stats()
    return {"prox_s": statistics.median(times), "prox_runs_s": times, "stats_s": time.perf_counter() - start}


def bench_model(subject: Subject, quick: bool) -> dict[str, Any]:
    log(f"\n{subject.name}: {subject.description}")
    prepared = prepare(subject)
    steps = math.ceil(len(prepared.x) / subject.batch_size)
    config = TrainConfig(epochs=subject.epochs, batch_size=subject.batch_size, seed=0, device="cpu")
    log(
        f"  {prepared.parameters:,} parameters, {len(prepared.views)} regularized layers, "
        f"{len(prepared.x)} samples, batch {subject.batch_size} ({steps} steps/epoch), "
        f"{subject.epochs} epoch(s) per run, {subject.repetitions} repetition(s)"
    )
    # Warm-up (not recorded): one short run of each arm, so first-call costs hit neither.
    warm = Prepared(
        prepared.module,
        prepared.views,
        prepared.x[: 2 * subject.batch_size],
        prepared.y[: 2 * subject.batch_size],
        prepared.parameters,
        {},
    )
    warm_config = TrainConfig(epochs=1, batch_size=subject.batch_size, seed=0, device="cpu")
    run_arm(warm, warm_config, nuclear=False)
    run_arm(warm, warm_config, nuclear=True)
    plain: list[dict[str, Any]] = []
    nuclear: list[dict[str, Any]] = []
    for rep in range(subject.repetitions):
        plain.append(run_arm(prepared, config, nuclear=False))
        nuclear.append(run_arm(prepared, config, nuclear=True))
        p, n = plain[-1], nuclear[-1]
        log(
            f"  rep {rep + 1}: plain {p['seconds_per_epoch']:.3f} s/epoch, nuclear "
            f"{n['seconds_per_epoch']:.3f} s/epoch (×{n['seconds_per_epoch'] / p['seconds_per_epoch']:.2f}; "
            f"prox every {n['prox_every']} steps, {n['prox_calls']} prox calls "
            f"{n['prox_seconds_in_run']:.2f} s, "
            f"stats {n['stats_seconds_in_run']:.2f} s)"
        )
    every = int(statistics.median(n["prox_every"] for n in nuclear))
    standalone = time_prox(prepared, config, every, repeats=1 if quick else 3)
    plain_epoch = statistics.median(p["seconds_per_epoch"] for p in plain)
    nuclear_epoch = statistics.median(n["seconds_per_epoch"] for n in nuclear)
    step_s = plain_epoch / steps
    ratio = nuclear_epoch / plain_epoch
    overhead_epoch = nuclear_epoch - plain_epoch
    plain_cpu = statistics.median(p["cpu_seconds_per_epoch"] for p in plain)
    nuclear_cpu = statistics.median(n["cpu_seconds_per_epoch"] for n in nuclear)
    prox_epoch = statistics.median(n["prox_seconds_in_run"] for n in nuclear) / subject.epochs
    stats_epoch = statistics.median(n["stats_seconds_in_run"] for n in nuclear) / subject.epochs
    prox_cpu = statistics.median(n["prox_cpu_seconds_in_run"] for n in nuclear) / subject.epochs
    stats_cpu = statistics.median(n["stats_cpu_seconds_in_run"] for n in nuclear) / subject.epochs
    return {
        "name": subject.name,
        "description": subject.description,
        "parameters": prepared.parameters,
        "regularized_layers": len(prepared.views),
        "regularized_shapes": sorted(
            {
                "×".join(map(str, v.matrix(dict(prepared.module.named_parameters())[v.param]).shape))
                for v in prepared.views
            }
        ),
        "samples": len(prepared.x),
        "batch_size": subject.batch_size,
        "steps_per_epoch": steps,
        "epochs_per_run": subject.epochs,
        "repetitions": subject.repetitions,
        "strength": STRENGTH,
        "train_config": asdict(config),
        "prepare_seconds": prepared.prepare_seconds,
        "plain_runs": plain,
        "nuclear_runs": nuclear,
        "plain_s_per_epoch": plain_epoch,
        "nuclear_s_per_epoch": nuclear_epoch,
        "ratio": ratio,
        "paired_ratios": [
            n["seconds_per_epoch"] / p["seconds_per_epoch"] for p, n in zip(plain, nuclear, strict=True)
        ],
        "goal": GOAL,
        "goal_met": ratio <= GOAL,
        "prox_every": every,
        "prox_s": standalone["prox_s"],
        "prox_runs_s": standalone["prox_runs_s"],
        "stats_s": standalone["stats_s"],
        "step_s": step_s,
        "prox_over_step": standalone["prox_s"] / step_s,
        "overhead_s_per_epoch": overhead_epoch,
        "prox_s_per_epoch_in_runs": prox_epoch,
        "stats_s_per_epoch_in_runs": stats_epoch,
        "plain_cpu_s_per_epoch": plain_cpu,
        "nuclear_cpu_s_per_epoch": nuclear_cpu,
        "cpu_ratio": nuclear_cpu / plain_cpu,
        "paired_cpu_ratios": [
            n["cpu_seconds_per_epoch"] / p["cpu_seconds_per_epoch"]
            for p, n in zip(plain, nuclear, strict=True)
        ],
        "prox_cpu_s_per_epoch_in_runs": prox_cpu,
        "stats_cpu_s_per_epoch_in_runs": stats_cpu,
    }


# --- output -------------------------------------------------------------------------------------


def miss_text(ratio: float) -> str:
    if ratio <= GOAL:
        return "met"
    return f"**missed** by {ratio - GOAL:.2f} ({(ratio - GOAL) / GOAL:.0%})"


def table(results: dict[str, Any]) -> list[str]:
    rows = []
    for m in results["models"]:
        paired = ", ".join(f"{r:.2f}" for r in m["paired_ratios"])
        paired_cpu = ", ".join(f"{r:.2f}" for r in m["paired_cpu_ratios"])
        rows.append(
            [
                m["name"],
                f"{m['parameters'] / 1e6:.2f} M",
                f"{m['steps_per_epoch']} × {m['epochs_per_run']}",
                f"{m['plain_s_per_epoch']:.3f}",
                f"{m['nuclear_s_per_epoch']:.3f}",
                f"{m['ratio']:.2f} ({paired})",
                miss_text(m["ratio"]),
                f"{m['cpu_ratio']:.2f} ({paired_cpu})",
                m["prox_every"],
                f"{m['prox_s']:.4f}",
                f"{m['step_s']:.4f}",
                f"{m['prox_over_step']:.1f}",
                f"{m['stats_s']:.4f}",
            ]
        )
    return markdown_table(
        "model | params | steps/epoch × epochs | plain s/epoch | nuclear s/epoch | ratio (paired) "
        "| goal | CPU-time ratio (paired) | prox every | one prox (s) | one step (s) | prox ÷ step "
        "| stats() (s)",
        rows,
    )


def breakdown(results: dict[str, Any]) -> list[str]:
    rows = []
    for m in results["models"]:
        extra = m["nuclear_cpu_s_per_epoch"] - m["plain_cpu_s_per_epoch"]
        prox, stats = m["prox_cpu_s_per_epoch_in_runs"], m["stats_cpu_s_per_epoch_in_runs"]
        calls = statistics.median(n["prox_calls"] for n in m["nuclear_runs"])
        rows.append(
            [
                m["name"],
                f"{m['plain_cpu_s_per_epoch']:.3f}",
                f"{extra:.3f}",
                f"{prox:.3f}",
                f"{calls:g}",
                f"{stats:.3f}",
                f"{extra - prox - stats:.3f}",
            ]
        )
    return markdown_table(
        "model | plain | nuclear − plain | in prox calls | prox calls per run | in stats() | rest", rows
    )


def explanation(results: dict[str, Any]) -> list[str]:
    lines = []
    for m in results["models"]:
        plain = m["plain_cpu_s_per_epoch"]
        steps_per_run = m["steps_per_epoch"] * m["epochs_per_run"]
        calls = statistics.median(n["prox_calls"] for n in m["nuclear_runs"])
        stats = m["stats_cpu_s_per_epoch_in_runs"]
        without_stats = (m["nuclear_cpu_s_per_epoch"] - stats) / plain
        short = (
            " In a run this short the one prox that measures the prox's cost (after three steps) is "
            "most of the overhead; a longer run spreads it over more steps."
            if calls <= 1
            else ""
        )
        lines.append(
            f"- {m['name']}: ratio {m['ratio']:.2f} ({miss_text(m['ratio'])}), {m['ratio'] - 1:+.0%} per "
            f"epoch in wall time, {m['cpu_ratio'] - 1:+.0%} in CPU time. One prox costs "
            f"{m['prox_over_step']:.1f} training steps, so the adaptive rule settled on a prox every "
            f"{m['prox_every']} steps (the first prox waits for three measured steps); {calls:g} prox "
            f"calls in a run of {steps_per_run} steps. Prox calls took "
            f"{m['prox_cpu_s_per_epoch_in_runs'] / plain:.0%} of a plain epoch's CPU time.{short} "
            "`NuclearProx.stats()`, which `train` calls once per epoch for the history, reuses the "
            "singular values the last prox left (it decomposes the Gram matrices itself only "
            f"before the first prox): it took {stats / plain:.0%} ({m['stats_s']:.4f} s on its own). "
            f"Without it the CPU-time ratio would be about {without_stats:.2f} (derived: nuclear "
            "minus the stats() CPU time measured inside the runs, ÷ plain)."
        )
    return lines


def markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = [
        f"Measured {env['date']} on {env['cpu_count']} CPU cores ({env['machine']}), torch "
        f"{env['torch_version']} with **{env['torch_threads']} thread(s)**, whole script "
        f"{results['wall_seconds'] / 60:.1f} min; load average (1 min) "
        f"{env['load_average_at_start'][0]:.1f} at the start and {env['load_average_at_end'][0]:.1f} at the "
        "end (this run keeps one core busy; more means other work shared the cores). One thread, "
        "because a multi-threaded kernel that loses a core to another process slows down many-fold "
        "and erratically. Each model is exported to ONNX, loaded with "
        "`load_model` and converted with `trainable_with_views`, then trained by "
        "`compressors.training.train` twice per repetition on fresh copies with the same "
        "`TrainConfig` (same seed, same batches): plain, then with `NuclearProx(module, views, "
        f"{STRENGTH})` (default adaptive interval, 10% prox budget). Arms alternate; each figure is the "
        "median over repetitions of one run's wall time ÷ its epochs. Ratio = nuclear ÷ plain "
        "(paired per-repetition ratios in brackets); the goal is judged on wall time. The CPU-time "
        "ratio is the same runs' process CPU time, much less sensitive to other load. One prox, one "
        "step and `stats()` are timed on their own (one step = plain epoch ÷ steps). The machine is "
        "shared with other work, so absolute times drift. Raw numbers: `bench/results/train_overhead.json`.",
        "",
        "Models: digits-cnn = `examples.digits.DigitsCNN` (trained 3 epochs) on scikit-learn's "
        "1797 digits; resnet18 = torchvision `resnet18(weights=None, num_classes=10)` on random "
        "3×32×32 images with random labels.",
        "",
        f"### nuclear ÷ plain seconds per epoch (goal ≤ {GOAL})",
        "",
        *table(results),
        "",
        "Where the extra time goes: process CPU seconds per epoch (medians; with one thread this is "
        "the work done, which other load changes much less than wall time), measured inside the "
        "nuclear runs by timing each prox and `stats()` call:",
        "",
        *breakdown(results),
        "",
        *explanation(results),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: fewer samples, epochs and repetitions"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    add_render_only(parser, RESULTS)
    args = parser.parse_args(argv)
    if args.render_only:
        return render_only(SECTION, RESULTS, markdown)
    torch.set_num_threads(args.threads)
    load_at_start = list(os.getloadavg())
    started = time.perf_counter()
    log(
        f"train_overhead benchmark ({'quick' if args.quick else 'full'}): torch {torch.__version__} CPU, "
        f"{torch.get_num_threads()} thread(s), {os.cpu_count()} cores"
    )
    models = [bench_model(subject, args.quick) for subject in subjects(args.quick)]
    results = {
        "benchmark": "train_overhead",
        "quick": args.quick,
        "goal": {"nuclear_over_plain_s_per_epoch_at_most": GOAL},
        "environment": environment(
            {**library_versions(), "torchvision": torchvision.__version__},
            torch_threads=torch.get_num_threads(),
            load_average_at_start=load_at_start,  # 1, 5, 15 min: other work sharing the cores
            load_average_at_end=list(os.getloadavg()),
            torch_version=torch.__version__,
        ),
        "models": models,
        "wall_seconds": time.perf_counter() - started,
    }
    save_results(results, QUICK_RESULTS if args.quick else RESULTS, SECTION, markdown, args.quick)
    for line in ["", *table(results), "", *breakdown(results), ""]:
        log(line)
    log(f"total {results['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
