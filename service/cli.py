"""``modelpress``: the server-side command line (inspect, compress; serve and worker later).

Exit codes: 0 success, 1 a quality gate failed, 2 the input was rejected or the job failed
(one line on stderr, no traceback), 3 usage error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from rich.console import Console
from rich.table import Table

from compressors import ModelpressError

if TYPE_CHECKING:  # the commands import the library when they run, so that --help stays quick
    from compressors import Curve, SweepSpec

EXIT_OK, EXIT_GATE, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2, 3


class UsageError(Exception):
    """A flag that does not say something runnable (exit 3, one line)."""


def _debug() -> bool:
    """``MODELPRESS_LOG=debug``: the one switch that adds the traceback to a one-line error."""
    return os.environ.get("MODELPRESS_LOG", "").strip().lower() == "debug"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="modelpress", description="Compress ONNX models with an honest report.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    inspect = sub.add_parser("inspect", help="print inputs, outputs, params, MACs, eligible layers")
    inspect.add_argument("model", type=Path, help=".onnx file or .zip bundle")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")

    _add_compress(sub.add_parser("compress", help="compress one model in-process, no server"))
    _add_sweep(sub.add_parser("sweep", help="accuracy-versus-compression curves for several methods"))
    serve = sub.add_parser("serve", help="the API and local workers (embedded mode)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, help="local job worker processes (default MODELPRESS_WORKERS)")
    sub.add_parser("worker", help="a Celery worker (distributed mode)")
    key = sub.add_parser("create-key", help="create an API key for a tenant; prints it last")
    key.add_argument("--tenant", required=True)
    sub.add_parser("migrate", help="bring the database schema up to date")
    return parser


def _add_compress(compress: argparse.ArgumentParser) -> None:
    from compressors import METHODS

    compress.add_argument("model", type=Path, help=".onnx file or .zip bundle")
    compress.add_argument("--method", default="svd", choices=list(METHODS))
    rank = compress.add_mutually_exclusive_group()
    rank.add_argument("--energy", type=float, help="keep >= this share of Σσ² per layer (0..1]")
    rank.add_argument("--target-macs", type=float, help="whole-model MACs after / before (0..1)")
    rank.add_argument("--target-params", type=float, help="whole-model params after / before (0..1)")
    compress.add_argument(
        "--data", help="'digits' or an .npz: one array per model input (x for a single input), and y"
    )
    compress.add_argument("-o", "--output", type=Path, required=True, help="where to write the .onnx")
    compress.add_argument("--report", type=Path, help="where to write report.json")
    compress.add_argument("--threads", type=int, default=1, help="onnxruntime threads for latency")
    compress.add_argument("--no-latency", action="store_true", help="skip latency measurement")
    for flag, kind, text in _TRAINING_OPTIONS:
        compress.add_argument(flag, type=kind, help=text)
    compress.add_argument("--lr-schedule", choices=["cosine", "constant"], help="step-size schedule (cosine)")
    compress.add_argument("--distill", action="store_true", help="distill from the original model")
    compress.add_argument("--json", action="store_true", help="print the report as JSON")
    compress.add_argument(
        "--scores",
        dest="scores_output",
        metavar="OUTPUT",
        help="the model output holding the class scores (training.output; default: found)",
    )


_TRAINING_OPTIONS = (
    ("--epochs", int, "regularized training epochs (retraining methods)"),
    ("--finetune-epochs", int, "fine-tuning epochs on the compressed model"),
    ("--strength", float, "regularizer strength (per-method default)"),
    ("--lr", float, "learning rate (Adam)"),
    ("--strength-ramp", float, "nuclear: share of training over which λ rises from 0"),
    ("--batch-size", int, "training batch size"),
    ("--seed", int, "seed for data order and sampling"),
)


def _add_sweep(sweep: argparse.ArgumentParser) -> None:
    sweep.add_argument("model", type=Path, help=".onnx file or .zip bundle")
    sweep.add_argument("--data", required=True, help="'digits' or an .npz with x (and y)")
    sweep.add_argument("--methods", default="svd,l2,nuclear", help="comma-separated methods")
    sweep.add_argument(
        "--targets",
        help="comma-separated ratios (MACs for factorizing and group lasso, "
        "nonzeros for l1/prune/variational)",
    )
    sweep.add_argument(
        "--strengths",
        action="append",
        default=[],
        metavar="METHOD=A,B",
        help="strength grid for one method, e.g. nuclear=0.3,1,3 (repeatable)",
    )
    sweep.add_argument("--epochs", type=int, default=5, help="training epochs per strength")
    sweep.add_argument("--finetune-epochs", type=int, default=0, help="fine-tuning epochs per point")
    sweep.add_argument("--lr", type=float, default=1e-3)
    sweep.add_argument("--lr-schedule", choices=["cosine", "constant"], default="cosine")
    sweep.add_argument(
        "--strength-ramp", type=float, default=0.0, help="nuclear: share of training over which λ rises"
    )
    sweep.add_argument("--seeds", default="0", help="comma-separated seeds")
    sweep.add_argument("--latency", action="store_true", help="measure batch-1 latency of every point")
    sweep.add_argument("-o", "--output", type=Path, required=True, help="folder for curve.csv/json/png")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    commands = {"inspect": _inspect, "compress": _compress, "sweep": _sweep}
    try:
        if args.command in commands:
            return commands[args.command](args)
        if args.command in ("serve", "worker", "create-key", "migrate"):
            from service import server

            return server.run(args)
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        if _debug():
            traceback.print_exc()
        code, line = _one_line(exc)
        print(f"modelpress: {line}", file=sys.stderr)
        return code
    return EXIT_USAGE


def _one_line(exc: BaseException) -> tuple[int, str]:
    """The exit code and the one line on stderr for whatever stopped a command."""
    if isinstance(exc, UsageError):
        return EXIT_USAGE, f"usage: {exc}"
    if isinstance(exc, ModelpressError):
        return EXIT_REJECTED, f"{exc.kind}: {exc.message}"
    if isinstance(exc, KeyboardInterrupt):
        return 130, "interrupted"
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return EXIT_REJECTED, f"job-failed: {type(exc).__name__}: {first}"


def _quiet_libraries() -> None:
    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    try:
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)
    except ImportError:
        pass


def _inspect(args: argparse.Namespace) -> int:
    from compressors import inspect_model, load_model

    with tempfile.TemporaryDirectory(prefix="modelpress-") as tmp:
        model = load_model(args.model, Path(tmp))
    if args.json:
        info = inspect_model(model)
        print(
            json.dumps({"sha256": model.sha256, "file_bytes": model.file_bytes, **info.to_dict()}, indent=2)
        )
        return EXIT_OK
    # everything but the retraining verdict is known without torch: print it first
    info = inspect_model(model, retraining=False)
    console = Console()
    console.print(f"[bold]{args.model}[/]  opset {info.opset}  {info.producer}  sha256 {model.sha256[:12]}")
    for kind, specs in (("input", info.inputs), ("output", info.outputs)):
        for spec in specs:
            console.print(f"  {kind:6} {spec.name}: {spec.dtype} {spec.shape}")
    console.print(
        f"  parameters {info.params:,}  nonzeros {info.nonzeros:,}  "
        f"MACs/sample {info.macs:,}  file bytes {model.file_bytes:,}"
    )
    table = Table("layer", "op", "weight", "params", "MACs", "factorizable")
    for layer in info.layers:
        table.add_row(
            layer.name,
            layer.op,
            "×".join(map(str, layer.weight_shape)),
            f"{layer.params:,}",
            f"{layer.macs:,}",
            "yes" if layer.eligible else f"no: {layer.reason}",
        )
    console.print(table)
    console.print(f"{len(info.eligible_layers)} of {len(info.layers)} layers can be factorized.")
    info = inspect_model(model)
    if info.retrainable:
        console.print("retrainable: yes (every method applies)")
    else:
        console.print(f"retrainable: no, because {info.retrainable_reason} (svd and prune still apply)")
    return EXIT_OK


def _compress(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from service.runner import Progress, run_job
    from service.spec import parse_spec

    try:
        spec = parse_spec(spec_from_args(args))
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"] if not str(p).endswith("Spec"))
        print(f"modelpress: usage: {where}: {error['msg']}", file=sys.stderr)
        return EXIT_USAGE
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="modelpress-") as tmp, _progress_bar(console) as bar:
        task = bar.add_task("load", total=1.0) if bar else None

        def show(p: Progress) -> None:
            if bar is not None and task is not None:
                label = p.stage if p.epoch is None else f"{p.stage} epoch {p.epoch}"
                bar.update(task, completed=p.fraction, description=label)

        output = run_job(spec, args.model, args.data, Path(tmp) / "work", Path(tmp) / "out", show)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(output.model_path), args.output)
        if args.report:
            args.report.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(output.report_path), args.report)
    report = output.report
    if args.json:
        print(report.to_json())
    else:
        _print_report(report)
    return EXIT_OK


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{what} must be comma-separated numbers, got {text!r}") from None


def _sweep(args: argparse.Namespace) -> int:
    from compressors import TrainingData, load_dataset, load_model, sweep, write_curve

    spec = _sweep_spec(args)
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="modelpress-") as tmp:
        model = load_model(args.model, Path(tmp))
        data = load_dataset(args.data, model.info.inputs)
        training = TrainingData.build(model.proto, data, model.info.inputs[0].name)
        curve = sweep(
            model,
            training,
            spec,
            on_point=lambda p: console.print(
                f"{p.method:12} strength={p.strength} target={p.target:g}: params {p.params_ratio:.3f} "
                f"MACs {p.macs_ratio:.3f} {p.accuracy:.4f}",
                highlight=False,
            ),
        )
    paths = write_curve(curve, args.output, f"{args.model.name} on {args.data}")
    _print_best(curve, spec.methods)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return EXIT_OK


def _sweep_spec(args: argparse.Namespace) -> SweepSpec:
    """The sweep the flags ask for, checked by the API's own rules (``service.schemas.SweepSpec``:
    each method once, strength grids for retraining methods only, targets in (0, 1))."""
    from pydantic import ValidationError

    from compressors import DEFAULT_TARGETS, METHODS, SweepSpec, TrainConfig
    from service.schemas import SweepSpec as Checked

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UsageError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    strengths: dict[str, Sequence[float]] = {}
    for item in args.strengths:
        method, _, values = item.partition("=")
        strengths[method.strip()] = _floats(values, f"--strengths {method}")
    targets = tuple(_floats(args.targets, "--targets")) if args.targets else DEFAULT_TARGETS
    seeds = [int(s) for s in _floats(args.seeds, "--seeds")]
    try:
        Checked(methods=methods, targets=list(targets), strengths=strengths, seeds=seeds)  # type: ignore[arg-type]
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"][:1])
        raise UsageError(f"--{where}: {error['msg'].removeprefix('Value error, ')}") from None
    config = TrainConfig(epochs=args.epochs, lr=args.lr, lr_schedule=args.lr_schedule)
    return SweepSpec(
        methods,
        targets,
        strengths,
        seeds,
        config,
        args.finetune_epochs,
        args.latency,
        ramp=args.strength_ramp,
    )


def _print_best(curve: Curve, methods: Sequence[str]) -> None:
    """Per method, the largest reductions that stay within 1 point of the original."""
    table = Table(
        "method",
        "largest params reduction",
        "largest MACs reduction",
        title=(f"at most 1% below the original's {curve.metric} ({curve.baseline_accuracy:.4f})"),
    )
    for method in methods:
        ok = [p for p in curve.points if p.method == method and p.accuracy >= curve.baseline_accuracy - 0.01]
        table.add_row(
            method,
            f"{1 / min(p.params_ratio for p in ok):.2f}x" if ok else "none",
            f"{1 / min(p.macs_ratio for p in ok):.2f}x" if ok else "none",
        )
    Console().print(table)


RANK_FLAGS = ("energy", "target_macs", "target_params")
TRAINING_FLAGS = (
    "epochs",
    "finetune_epochs",
    "strength",
    "lr",
    "lr_schedule",
    "strength_ramp",
    "batch_size",
    "seed",
)


def spec_from_args(args: argparse.Namespace) -> dict:
    """The job spec (as the API takes it) from command-line flags; unset flags keep defaults."""
    spec: dict = {"method": args.method}
    rank = _given(args, RANK_FLAGS)
    if rank:
        spec["rank"] = rank
    training = _given(args, TRAINING_FLAGS)
    if args.distill:
        training["distill"] = True
    if getattr(args, "scores_output", None):
        training["output"] = args.scores_output
    if training:
        spec["training"] = training
    spec["evaluation"] = {"latency": not args.no_latency, "threads": args.threads}
    return spec


def _given(args: argparse.Namespace, names: Sequence[str]) -> dict:
    """The flags among ``names`` that were set, by their spec field name."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


class _NoBar:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _progress_bar(console: Console):  # type: ignore[no-untyped-def]
    """A progress bar on a terminal; nothing when output goes to a file or a pipe."""
    if not console.is_terminal:
        return _NoBar()
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description:20}"), BarColumn(), TimeElapsedColumn(), console=console, transient=True
    )


def _print_report(report) -> None:  # type: ignore[no-untyped-def]
    from compressors import summary_rows

    console = Console()
    if not console.is_terminal:  # a file or a pipe: rows whole, not wrapped at 80 columns
        console = Console(width=160)
    table = Table(
        "figure", "before", "after", "after/before", title=f"modelpress {report.method} {report.rank}"
    )
    for row in summary_rows(report):
        table.add_row(*row)
    console.print(table)
    layers = Table("layer", "op", "shape", "kept", "energy kept", "params before → after")
    for layer in report.layers:
        layers.add_row(
            layer.name,
            layer.op,
            "×".join(map(str, layer.shape)),
            _kept(layer),
            "–" if layer.energy_kept is None else f"{layer.energy_kept:.3f}",
            f"{layer.params_before:,} → {layer.params_after:,}",
        )
    console.print(layers)
    threads = report.latency.get("threads")
    if threads:
        console.print(f"latency: onnxruntime CPU, {threads} intra-op thread(s), median after warm-up")


def _kept(layer) -> str:  # type: ignore[no-untyped-def]
    """What a layer kept, in the terms of its method: rank, output channels or nonzeros."""
    if layer.rank is not None:
        return f"rank {layer.rank} / {layer.full_rank}"
    if layer.channels is not None:
        return f"channels {layer.channels[0]} / {layer.channels[1]}"
    if layer.nonzeros_after is not None:
        return f"nonzeros {layer.nonzeros_after:,} / {layer.params_before:,}"
    if layer.params_after < layer.params_before:
        return "inputs removed upstream"
    return "dense"


if __name__ == "__main__":
    sys.exit(main())
