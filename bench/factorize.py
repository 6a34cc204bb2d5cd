"""Factorization benchmark: does training-free SVD make models as much faster as it makes them
smaller, and does the pipeline cost little more than the SVD it cannot avoid?

Two models are built here with random weights (never downloaded) and exported the way users
export theirs (``examples.digits.export``, dynamo, dynamic batch), cached in ``bench/.cache/``:
a torchvision ResNet-50 (25.5 M parameters once the exporter folds BatchNorm, 4.1 GMACs per
sample) and a wide MLP
1024-4096-4096-1024. Each is loaded once with ``compressors.load_model`` and compressed
by the ``svd`` method (``compressors.onnx.lowrank.factorize``) at whole-model MAC targets
0.5, 0.25 and 0.125 (``Target(ratio, "macs")``). Then:

(a) Speedup per MACs reduction, at batch 1 and 32:
    (latency_before / latency_after) / (macs_before / macs_after); goal >= 0.8.
    Latency is ``compressors.onnx.metrics.measure_latency`` (onnxruntime CPU, intra-op threads
    fixed, 1 by default). The original and its three compressed versions are measured in
    turn, in rounds whose order rotates, so machine noise hits all of them alike; each
    figure is the median over rounds of the per-round medians. MACs after are counted
    afresh on the compressed graph (``inspect_model``), not taken from the compressor's
    own bookkeeping. One onnxruntime profile per model and batch splits the run time into
    MAC-bearing kernels (Conv, Gemm, ...), layout reorders and everything else, which is
    what explains a miss.

(b) Pipeline time per bare SVD time; goal <= 2.0. "Pipeline" is ``svd.compress`` (shape
    analysis, SVD of every eligible layer, rank allocation, graph rewrite) plus
    ``metrics.write_model``. "Bare SVD" is ``np.linalg.svd(full_matrices=False)`` of the
    very matrices the pipeline decomposes (``find_layers`` + ``weight_matrix``, extracted
    before timing). The two are timed back to back per target, alternating which goes first,
    both with one BLAS thread (``OPENBLAS_NUM_THREADS``, which the caller may set otherwise).

Results go to ``bench/results/factorize.json`` and the "Factorization" section of
``docs/benchmarks.md``. ``--quick`` is a smoke run (ResNet-18, a narrow MLP, few runs) that
writes ``bench/.cache/factorize.quick.json`` and leaves the committed results alone;
``--render-only`` rewrites the docs section from the saved JSON.

    .venv/bin/python bench/factorize.py [--quick] [--threads N] [--render-only]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

# One BLAS thread for the SVDs (pipeline and bare alike) unless the caller sets it: on a small
# shared machine a multi-threaded SVD that loses a core to another process slows down
# many-fold and erratically, which drowns the comparison. Must precede numpy's import.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torchvision
from benchmarks_doc import add_render_only, environment, markdown_table, render_only, save_results
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # examples/, when run as a script
from compressors.intake.loading import LoadedModel, load_model
from compressors.onnx.graph import concrete_input_shapes
from compressors.onnx.inspection import analysis_shapes, inspect_model
from compressors.onnx.layers import find_layers
from compressors.onnx.lowrank import (
    factorize,
    weight_matrix,
)
from compressors.onnx.macs import count_params
from compressors.onnx.metrics import measure_latency, random_feeds, write_model
from compressors.onnx.ranks import Fixed, Target, break_even_rank
from compressors.onnx.result import CompressionResult
from compressors.report import library_versions
from examples import digits

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache"
RESULTS = ROOT / "bench" / "results" / "factorize.json"
QUICK_RESULTS = CACHE / "factorize.quick.json"
SECTION = "## Factorization (bench/factorize.py)"

TARGETS = (0.5, 0.25, 0.125)
BATCHES = (1, 32)
SPEEDUP_GOAL = 0.8  # (latency before / after) / (MACs before / after), at least
PIPELINE_GOAL = 2.0  # pipeline time / bare SVD time, at most

# onnxruntime kernel names (after its graph fusions) grouped for the time split
MAC_KERNELS = frozenset({"Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul", "ConvTranspose"})
LAYOUT_KERNELS = frozenset({"ReorderInput", "ReorderOutput"})


@dataclass(frozen=True)
class Settings:
    quick: bool
    latency_rounds: int  # rounds of (original, each compressed model) in rotating order
    min_runs: int  # per measure_latency call and batch
    max_seconds: float  # per measure_latency call and batch
    profile_runs: dict[int, int]  # batch -> profiled runs
    threads: int = 1  # onnxruntime intra-op threads (--threads)
    warmup: int = 1


FULL = Settings(False, latency_rounds=4, min_runs=3, max_seconds=1.0, profile_runs={1: 10, 32: 2})
QUICK = Settings(True, latency_rounds=1, min_runs=2, max_seconds=0.2, profile_runs={1: 2, 32: 1})


class WideMLP(nn.Module):
    """Linear-ReLU stack; ``forward`` takes ``x``, the input name ``digits.export`` declares."""

    def __init__(self, sizes: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for fan_in, fan_out in itertools.pairwise(sizes):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        self.net = nn.Sequential(*layers[:-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass(frozen=True)
class Subject:
    name: str
    description: str
    path: Path
    build: Callable[[], tuple[nn.Module, torch.Tensor]]  # the model and an example input


def subjects(quick: bool) -> list[Subject]:
    resnet = "resnet18" if quick else "resnet50"
    widths = (256, 1024, 1024, 256) if quick else (1024, 4096, 4096, 1024)
    mlp = "mlp-" + "-".join(map(str, widths))

    def build_resnet() -> tuple[nn.Module, torch.Tensor]:
        return getattr(torchvision.models, resnet)(weights=None), torch.zeros(1, 3, 224, 224)

    def build_mlp() -> tuple[nn.Module, torch.Tensor]:
        return WideMLP(widths), torch.zeros(1, widths[0])

    return [
        Subject(
            resnet,
            f"torchvision {resnet}, random weights, 1×3×224×224",
            CACHE / f"{resnet}.onnx",
            build_resnet,
        ),
        Subject(
            mlp,
            f"Linear-ReLU MLP {'-'.join(map(str, widths))}, random weights",
            CACHE / f"{mlp}.onnx",
            build_mlp,
        ),
    ]


def exported(subject: Subject) -> Path:
    """The cached export, made (seeded) when absent."""
    if subject.path.exists():
        return subject.path
    torch.manual_seed(0)
    model, example = subject.build()
    log(f"  exporting {subject.name} to {subject.path.relative_to(ROOT)}")
    return digits.export(model, example, subject.path, dynamic_batch=True)


def log(message: str) -> None:
    print(message, flush=True)


# --- (b) pipeline vs bare SVD -------------------------------------------------------------


def _svd(loaded: LoadedModel, rule: Any) -> CompressionResult:
    shapes, batch = analysis_shapes(loaded.proto)
    return factorize(loaded.proto, shapes, rule, batch)


def time_bare_svd(matrices: list[np.ndarray]) -> float:
    start = time.perf_counter()
    for matrix in matrices:
        np.linalg.svd(matrix, full_matrices=False)
    return time.perf_counter() - start


def time_pipeline(loaded: LoadedModel, target: float, out: Path) -> tuple[CompressionResult, float, float]:
    """(result, seconds in svd.compress, seconds in write_model)."""
    start = time.perf_counter()
    result = _svd(loaded, Target(target, "macs"))
    compressed = time.perf_counter()
    write_model(result.model, out)
    return result, compressed - start, time.perf_counter() - compressed


# --- (a) latency and its breakdown --------------------------------------------------------


def alternating_latency(
    models: dict[str, onnx.ModelProto], settings: Settings
) -> dict[str, dict[int, list[float]]]:
    """Per model and batch, the median ms of each round.

    Within a round each batch size is measured for every model in turn, so the models of a
    round are measured seconds apart; the order rotates from round to round."""
    names = list(models)
    medians: dict[str, dict[int, list[float]]] = {name: defaultdict(list) for name in names}
    for round_ in range(settings.latency_rounds):
        shift = round_ % len(names)
        for batch in BATCHES:
            for name in names[shift:] + names[:shift]:
                (result,) = measure_latency(
                    models[name],
                    (batch,),
                    threads=settings.threads,
                    warmup=settings.warmup,
                    min_runs=settings.min_runs,
                    max_seconds=settings.max_seconds,
                )
                assert result.median_ms is not None, "the exported models have a dynamic batch"
                medians[name][batch].append(result.median_ms)
        log(
            f"    round {round_ + 1}/{settings.latency_rounds}: "
            + ", ".join(
                f"{name} " + "/".join(f"{medians[name][b][-1]:.2f}" for b in BATCHES) + " ms"
                for name in names
            )
        )
    return medians


def kernel_times(
    model: onnx.ModelProto, batch: int, threads: int, runs: int, workdir: Path
) -> dict[str, float]:
    """Mean ms per run spent in each onnxruntime kernel type (after its fusions), from its profiler.

    The session mirrors ``compressors.onnx.metrics.session`` (same threads, sequential)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_profiling = True
    options.profile_file_prefix = str(workdir / "profile")
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = random_feeds(sess, concrete_input_shapes(model, batch), np.random.default_rng(0))
    sess.run(None, feeds)  # warm-up, excluded below by counting only the last ``runs`` runs
    for _ in range(runs):
        sess.run(None, feeds)
    trace = Path(sess.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    runs_seen = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    cutoff = runs_seen[-runs]["ts"] if len(runs_seen) >= runs else 0
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= cutoff:
            totals[event["args"]["op_name"]] += event["dur"] / 1e3 / runs
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def split_kernels(times: dict[str, float]) -> dict[str, float]:
    mac = sum(ms for op, ms in times.items() if op in MAC_KERNELS)
    layout = sum(ms for op, ms in times.items() if op in LAYOUT_KERNELS)
    return {
        "mac_kernels_ms": mac,
        "layout_reorder_ms": layout,
        "other_ms": sum(times.values()) - mac - layout,
    }


def nchwc_block() -> int:
    """onnxruntime's NCHWc channel block on this CPU: 16 with AVX-512, else 8 (AVX2)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return 8
    return 16 if "avx512f" in flags else 8


def rounded_rule(result: CompressionResult, block: int) -> Fixed | None:
    """The allocation of ``result`` with every factorized conv's rank rounded up to a multiple
    of ``block`` (left dense where that reaches break-even); None when no conv was factorized.
    A diagnostic only: it costs more MACs than the target asked for."""
    if not any(layer.op == "Conv" and layer.rank is not None for layer in result.layers):
        return None
    ranks: dict[str, int] = {}
    for layer in result.layers:
        if layer.rank is None:
            continue
        if layer.op != "Conv":
            ranks[layer.name] = layer.rank
            continue
        rows = layer.shape[0]
        up = -(-layer.rank // block) * block
        if up < break_even_rank(rows, layer.params_before // rows):
            ranks[layer.name] = up
    return Fixed(ranks)


# --- one model ------------------------------------------------------------------------------


def compress_target(
    loaded: LoadedModel, matrices: list[np.ndarray], target: float, workdir: Path, svd_first: bool
) -> tuple[dict[str, Any], CompressionResult]:
    """Compress at one MAC target, timing the pipeline against the bare SVD next to it."""
    out = workdir / f"t{target}.onnx"
    bare = time_bare_svd(matrices) if svd_first else 0.0
    result, compress_s, write_s = time_pipeline(loaded, target, out)
    if not svd_first:
        bare = time_bare_svd(matrices)
    out.unlink()
    pipeline_s = compress_s + write_s
    macs_after = inspect_model(result.model).macs  # counted afresh on the rewritten graph
    params_after = count_params(result.model)[0]
    factorized = sum(1 for layer in result.layers if layer.rank is not None)
    log(
        f"  target {target}: MACs {macs_after / loaded.info.macs:.4f}, params "
        f"{params_after / loaded.info.params:.4f}, {factorized}/{len(matrices)} layers factorized; "
        f"pipeline {pipeline_s:.2f} s (compress {compress_s:.2f} + write {write_s:.2f}) "
        f"vs bare SVD {bare:.2f} s -> {pipeline_s / bare:.2f}"
    )
    if macs_after != result.macs_after:
        log(f"  WARNING: compressor reports {result.macs_after:,} MACs, graph counts {macs_after:,}")
    entry = {
        "target_macs": target,
        "macs_before": loaded.info.macs,
        "macs_after": macs_after,
        "macs_after_reported_by_compressor": result.macs_after,
        "macs_ratio": macs_after / loaded.info.macs,
        "params_before": loaded.info.params,
        "params_after": params_after,
        "params_ratio": params_after / loaded.info.params,
        "layers_eligible": len(matrices),
        "layers_factorized": factorized,
        "ranks": {layer.name: layer.rank for layer in result.layers},
        "nodes_before": len(loaded.proto.graph.node),
        "nodes_after": len(result.model.graph.node),
        "pipeline": {
            "bare_svd_s": bare,
            "compress_s": compress_s,
            "write_s": write_s,
            "pipeline_s": pipeline_s,
            "ratio": pipeline_s / bare,
            "goal": PIPELINE_GOAL,
            "goal_met": pipeline_s / bare <= PIPELINE_GOAL,
            "order": "svd first" if svd_first else "pipeline first",
        },
        "latency": {},
    }
    return entry, result


def bench_model(subject: Subject, settings: Settings, workdir: Path) -> dict[str, Any]:
    log(f"\n== {subject.name}: {subject.description}")
    path = exported(subject)
    start = time.perf_counter()
    loaded = load_model(path, workdir / subject.name)
    log(
        f"  loaded in {time.perf_counter() - start:.1f} s: {loaded.info.params:,} params, "
        f"{loaded.info.macs:,} MACs/sample"
    )

    start = time.perf_counter()
    shapes, batch = analysis_shapes(loaded.proto)
    shape_analysis_s = time.perf_counter() - start
    layers = [layer for layer in find_layers(loaded.proto, shapes, batch) if layer.eligible]
    matrices = [weight_matrix(loaded.proto, layer) for layer in layers]
    log(f"  {len(layers)} eligible layers; largest matrix {max(matrices, key=lambda m: m.size).shape}")

    targets: list[dict[str, Any]] = []
    compressed: dict[str, onnx.ModelProto] = {"original": loaded.proto}
    block = nchwc_block()
    variants: dict[str, int] = {}  # target key -> MACs of its rounded-rank variant
    for i, target in enumerate(TARGETS):
        key = f"t{target}"
        entry, result = compress_target(
            loaded, matrices, target, workdir / subject.name, svd_first=i % 2 == 0
        )
        targets.append(entry)
        compressed[key] = result.model
        rounded = rounded_rule(result, block)
        if rounded is not None:
            variant = _svd(loaded, rounded).model
            compressed[f"{key}-r{block}"] = variant
            variants[key] = inspect_model(variant).macs

    log(
        f"  latency: {settings.latency_rounds} rounds, {settings.threads} intra-op thread(s), "
        f"ms at batch " + "/".join(map(str, BATCHES))
    )
    medians = alternating_latency(compressed, settings)
    profiles: dict[str, dict[int, dict[str, float]]] = {
        name: {
            b: kernel_times(model, b, settings.threads, settings.profile_runs[b], workdir) for b in BATCHES
        }
        for name, model in compressed.items()
        if not name.endswith(f"-r{block}")  # the diagnostic variants are timed, not profiled
    }
    for entry in targets:
        key = f"t{entry['target_macs']}"
        macs_reduction = entry["macs_before"] / entry["macs_after"]
        for b in BATCHES:
            before = statistics.median(medians["original"][b])
            after = statistics.median(medians[key][b])
            speedup = statistics.median(paired(medians["original"][b], medians[key][b]))
            ratio = speedup / macs_reduction
            entry["latency"][str(b)] = {
                "batch": b,
                "before_ms": before,
                "after_ms": after,
                "before_round_medians_ms": medians["original"][b],
                "after_round_medians_ms": medians[key][b],
                "speedup": speedup,
                "speedup_of_medians": before / after,
                "macs_reduction": macs_reduction,
                "speedup_per_macs_reduction": ratio,
                "goal": SPEEDUP_GOAL,
                "goal_met": ratio >= SPEEDUP_GOAL,
                "kernels_before_ms": profiles["original"][b],
                "kernels_after_ms": profiles[key][b],
                "split_before_ms": split_kernels(profiles["original"][b]),
                "split_after_ms": split_kernels(profiles[key][b]),
            }
            log(
                f"  target {entry['target_macs']}, batch {b}: {before:.2f} -> {after:.2f} ms, speedup "
                f"{speedup:.2f}x for {macs_reduction:.2f}x fewer MACs -> {ratio:.2f} "
                f"({'met' if ratio >= SPEEDUP_GOAL else 'MISSED'})"
            )
        if key in variants:
            entry["rounded_ranks_diagnostic"] = rounded_entry(
                block, loaded.info.macs, variants[key], medians["original"], medians[f"{key}-r{block}"]
            )
    return {
        "name": subject.name,
        "description": subject.description,
        "file": str(path.relative_to(ROOT)),
        "params": loaded.info.params,
        "macs_per_sample": loaded.info.macs,
        "eligible_layers": len(layers),
        "matrix_shapes": [list(m.shape) for m in matrices],
        "shape_analysis_s": shape_analysis_s,
        "targets": targets,
    }


def paired(before: list[float], after: list[float]) -> list[float]:
    """Speedup within each round (original and compressed measured close together in time)."""
    return [b / a for b, a in zip(before, after, strict=True)]


def per_round(lat: dict[str, Any]) -> list[float]:
    return paired(lat["before_round_medians_ms"], lat["after_round_medians_ms"])


def spread(values: list[float]) -> str:
    return f"{min(values):.2f}–{max(values):.2f}"


def rounded_entry(
    block: int,
    macs_before: int,
    macs_after: int,
    before: dict[int, list[float]],
    after: dict[int, list[float]],
) -> dict[str, Any]:
    latency = {}
    for b in BATCHES:
        speedup = statistics.median(paired(before[b], after[b]))
        latency[str(b)] = {
            "after_ms": statistics.median(after[b]),
            "after_round_medians_ms": after[b],
            "speedup": speedup,
            "speedup_per_macs_reduction": speedup / (macs_before / macs_after),
        }
    return {
        "block": block,
        "macs_after": macs_after,
        "macs_ratio": macs_after / macs_before,
        "latency": latency,
    }


# --- output ---------------------------------------------------------------------------------


def miss_text(value: float, goal: float, higher_is_better: bool) -> str:
    if (value >= goal) if higher_is_better else (value <= goal):
        return "met"
    gap = goal - value if higher_is_better else value - goal
    return f"**missed** by {gap:.2f} ({gap / goal:.0%})"


def each_target(results: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(model, target entry) for every model and MAC target in ``results``."""
    for model in results["models"]:
        for entry in model["targets"]:
            yield model, entry


def each_point(results: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """(model, target entry, latency at one batch) for every latency measured in ``results``."""
    for model, entry in each_target(results):
        for lat in entry["latency"].values():
            yield model, entry, lat


def markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = [
        f"Measured {env['date']} on {env['cpu_count']} CPU cores ({env['machine']}), onnxruntime "
        f"{env['versions'].get('onnxruntime')} with **{env['ort_intra_op_threads']} intra-op thread(s)**, "
        f"whole script {results['wall_seconds'] / 60:.1f} min. Models have random weights (speed does not "
        "depend on their values). The machine is shared with other work, so absolute times drift; "
        "the ratios are taken side by side (1-minute load average "
        f"{env['load_average_start']:.1f} at the start, {env['load_average_end']:.1f} at the end). "
        f"Latency: median over {results['settings']['latency_rounds']} rounds of `measure_latency` "
        "medians; within a round every model is measured in turn at one batch size, seconds apart. "
        "Speedup: median over rounds of that round's before/after ratio (range in brackets), so "
        "drift between rounds cancels. MACs after are counted on the rewritten graph. Raw numbers, "
        "per-round medians and kernel profiles: `bench/results/factorize.json`.",
        "",
        f"### Speedup ÷ MACs reduction (goal ≥ {SPEEDUP_GOAL})",
        "",
        *markdown_table(
            "model | target MACs | batch | MACs after/before | params after/before | latency before (ms) "
            "| latency after (ms) | speedup (per-round range) | MACs reduction | speedup ÷ MACs reduction "
            "| goal",
            [
                [
                    model["name"],
                    entry["target_macs"],
                    lat["batch"],
                    f"{entry['macs_ratio']:.3f}",
                    f"{entry['params_ratio']:.3f}",
                    f"{lat['before_ms']:.2f}",
                    f"{lat['after_ms']:.2f}",
                    f"{lat['speedup']:.2f}× ({spread(per_round(lat))})",
                    f"{lat['macs_reduction']:.2f}×",
                    f"{lat['speedup_per_macs_reduction']:.2f}",
                    miss_text(lat["speedup_per_macs_reduction"], SPEEDUP_GOAL, True),
                ]
                for model, entry, lat in each_point(results)
            ],
        ),
        "",
        "Where the time goes (onnxruntime profiler, ms per run, after its graph fusions): MAC kernels "
        "(Conv/FusedConv/Gemm), NCHWc layout reorders, and everything else (unfused Add/Relu, pooling).",
        "",
        *markdown_table(
            "model | target MACs | batch | MAC kernels before → after | MAC-kernel speedup "
            "| reorders before → after | other before → after",
            [
                [model["name"], entry["target_macs"], lat["batch"], *split_cells(lat)]
                for model, entry, lat in each_point(results)
            ],
        ),
        *diagnostic_table(results),
        "",
        f"### Pipeline time ÷ bare SVD time (goal ≤ {PIPELINE_GOAL})",
        "",
        "Pipeline: `svd.compress` (shape analysis, SVD of every eligible layer, rank allocation, "
        "rewrite) + `write_model`. Bare SVD: `np.linalg.svd(full_matrices=False)` of the same "
        "matrices, timed back to back with it (order alternating by target), both with "
        f"{env['blas_threads']} BLAS thread(s).",
        "",
        *markdown_table(
            "model | target MACs | matrices | bare SVD (s) | compress (s) | write (s) | pipeline (s) "
            "| pipeline ÷ SVD | goal",
            [
                [
                    model["name"],
                    entry["target_macs"],
                    entry["layers_eligible"],
                    *pipeline_cells(entry["pipeline"]),
                ]
                for model, entry in each_target(results)
            ],
        ),
        "",
        *explanation(results),
        "",
    ]
    return "\n".join(lines)


def split_cells(lat: dict[str, Any]) -> list[str]:
    """The kernel-split columns of one latency point: MAC kernels before → after and their speedup,
    layout reorders before → after, other kernels before → after."""
    b, a = lat["split_before_ms"], lat["split_after_ms"]
    return [
        f"{b['mac_kernels_ms']:.2f} → {a['mac_kernels_ms']:.2f}",
        f"{b['mac_kernels_ms'] / a['mac_kernels_ms']:.2f}×",
        f"{b['layout_reorder_ms']:.2f} → {a['layout_reorder_ms']:.2f}",
        f"{b['other_ms']:.2f} → {a['other_ms']:.2f}",
    ]


def pipeline_cells(p: dict[str, Any]) -> list[str]:
    """The timing columns of one target: bare SVD, compress, write and pipeline seconds, the
    pipeline ÷ SVD ratio and whether it met its goal."""
    return [
        f"{p['bare_svd_s']:.2f}",
        f"{p['compress_s']:.2f}",
        f"{p['write_s']:.2f}",
        f"{p['pipeline_s']:.2f}",
        f"{p['ratio']:.2f}",
        miss_text(p["ratio"], PIPELINE_GOAL, False),
    ]


def diagnostic_table(results: dict[str, Any]) -> list[str]:
    diagnosed = [
        (model, entry) for model, entry in each_target(results) if "rounded_ranks_diagnostic" in entry
    ]
    if not diagnosed:
        return []
    block = diagnosed[0][1]["rounded_ranks_diagnostic"]["block"]
    rows = []
    for model, entry in diagnosed:
        diag = entry["rounded_ranks_diagnostic"]
        for batch, lat in diag["latency"].items():
            plain = entry["latency"][batch]
            rows.append(
                [
                    model["name"],
                    entry["target_macs"],
                    batch,
                    f"{diag['macs_ratio']:.3f}",
                    f"{lat['after_ms']:.2f}",
                    f"{lat['speedup']:.2f}× "
                    f"({spread(paired(plain['before_round_medians_ms'], lat['after_round_medians_ms']))})",
                    f"{lat['speedup_per_macs_reduction']:.2f}",
                    f"{lat['after_ms'] / plain['after_ms']:.2f}×",
                ]
            )
    return [
        "",
        f"### Diagnostic: conv ranks rounded up to a multiple of {block}",
        "",
        f"The same allocations with every factorized conv's rank rounded up to a multiple of {block}, "
        "onnxruntime's NCHWc channel block on this CPU, timed in the same rounds as the table above. "
        "Not a goal measurement: these models keep more MACs than the target asked for.",
        "",
        *markdown_table(
            "model | target MACs | batch | MACs after/before | latency after (ms) "
            "| speedup (per-round range) | speedup ÷ MACs reduction | latency vs. unrounded ranks",
            rows,
        ),
    ]


def explanation(results: dict[str, Any]) -> list[str]:
    """Why goals were missed, stated from the measured kernel split."""
    misses = [(model, entry, lat) for model, entry, lat in each_point(results) if not lat["goal_met"]]
    slow_pipelines = [
        (model, entry) for model, entry in each_target(results) if not entry["pipeline"]["goal_met"]
    ]
    if not misses and not slow_pipelines:
        return ["All goals were met in this run."]
    lines = ["### Misses, and why", ""]
    for model, entry, lat in misses:
        b, a = lat["split_before_ms"], lat["split_after_ms"]
        rest_before = b["layout_reorder_ms"] + b["other_ms"]
        rest_after = a["layout_reorder_ms"] + a["other_ms"]
        ratio = lat["speedup_per_macs_reduction"]
        line = (
            f"- {model['name']}, target {entry['target_macs']}, batch {lat['batch']}: {ratio:.2f}, "
            f"{miss_text(ratio, SPEEDUP_GOAL, True)}. MAC kernels got "
            f"{b['mac_kernels_ms'] / a['mac_kernels_ms']:.2f}× faster for {lat['macs_reduction']:.2f}× "
            "fewer MACs"
        )
        if rest_after >= 0.01:
            line += (
                f"; reorders and other ops went from {rest_before:.2f} to {rest_after:.2f} ms per run "
                f"({rest_after / (rest_after + a['mac_kernels_ms']):.0%} of the compressed model's "
                "kernel time)"
            )
        lines.append(line + ".")
    conv_models = {m["name"] for m, _, lat in misses if "Conv" in lat["kernels_before_ms"]}
    gemm_models = {m["name"] for m, _, _ in misses} - conv_models
    if misses:
        lines += ["", "MACs count only multiply-accumulates; what they leave out is why a miss happens:"]
    if conv_models:
        lines += [
            "- Each factorized conv becomes two convs (r filters of the original kernel, then a 1×1 "
            "conv r → Cout), so the compressed graph runs twice the conv kernels, each on a thinner "
            "tensor. A thin conv does fewer MACs per byte it moves (the first still reads the full "
            "Cin·k·k input patches whatever r is, and the r-channel intermediate is written and read "
            "back), so MAC kernels speed up less than MACs fall; per-kernel fixed costs do not "
            "shrink at all.",
            "- onnxruntime runs convs in its blocked NCHWc layout only when channel counts are "
            "multiples of its block (8 with AVX2, 16 with AVX-512); off the block, ReorderInput/"
            "ReorderOutput nodes convert activations around the conv and the residual Add and Relu "
            "are no longer fused. The allocator therefore moves conv ranks in blocks of 8 "
            "(`CONV_RANK_MULTIPLE`), which keeps the reorder and other-op columns of the profile "
            "small; on 16-wide (AVX-512) machines some layers would still fall off the block.",
        ]
    if gemm_models:
        lines += [
            "- Each factorized Gemm becomes two Gemms with an r-wide intermediate. At small r the "
            "GEMMs are thin, run at lower arithmetic efficiency, and fixed per-kernel costs "
            "(dispatch, packing) that do not scale with MACs weigh more the shorter the run.",
        ]
    for model, entry in slow_pipelines:
        p = entry["pipeline"]
        lines.append(
            f"- pipeline, {model['name']}, target {entry['target_macs']}: {p['ratio']:.2f}, "
            f"{miss_text(p['ratio'], PIPELINE_GOAL, False)}: compress {p['compress_s']:.2f} s + write "
            f"{p['write_s']:.2f} s against {p['bare_svd_s']:.2f} s of bare SVD (shape analysis alone "
            f"takes {model['shape_analysis_s']:.2f} s)."
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: smaller models, few runs, results to bench/.cache/ only",
    )
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    add_render_only(parser, RESULTS)
    args = parser.parse_args(argv)
    if args.render_only:
        return render_only(SECTION, RESULTS, markdown)
    settings = replace(QUICK if args.quick else FULL, threads=args.threads)
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    log(
        f"factorize benchmark ({'quick' if settings.quick else 'full'}): onnxruntime CPU, "
        f"{settings.threads} intra-op thread(s), {os.cpu_count()} cores"
    )
    with tempfile.TemporaryDirectory(prefix="factorize-") as tmp:
        models = [bench_model(subject, settings, Path(tmp)) for subject in subjects(settings.quick)]
    results = {
        "benchmark": "factorize",
        "quick": settings.quick,
        "goals": {
            "speedup_per_macs_reduction_at_least": SPEEDUP_GOAL,
            "pipeline_over_bare_svd_at_most": PIPELINE_GOAL,
        },
        "settings": {
            "targets_macs": list(TARGETS),
            "batches": list(BATCHES),
            "latency_rounds": settings.latency_rounds,
            "min_runs": settings.min_runs,
            "max_seconds": settings.max_seconds,
            "warmup": settings.warmup,
            "profile_runs": settings.profile_runs,
        },
        "environment": environment(
            {**library_versions(), "torchvision": torchvision.__version__},
            ort_intra_op_threads=settings.threads,
            blas_threads=os.environ["OPENBLAS_NUM_THREADS"],
            load_average_start=load_start,
            load_average_end=os.getloadavg()[0],
        ),
        "models": models,
        "wall_seconds": time.perf_counter() - started,
    }
    save_results(results, QUICK_RESULTS if settings.quick else RESULTS, SECTION, markdown, settings.quick)
    log("\n" + markdown(results))
    log(f"total {results['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
