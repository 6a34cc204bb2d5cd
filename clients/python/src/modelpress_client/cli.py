"""``modelpress-client``: submit, follow and gate compression jobs from a shell or CI.

Exit codes: 0 success (every gate passed), 1 a quality gate failed, 2 the input was rejected,
the job failed or the server could not be reached (one line on stderr, no traceback), 3 usage
or authentication error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.table import Table

from modelpress_client import errors
from modelpress_client._client import Client
from modelpress_client.gates import GateResult, check_gates, junit_xml
from modelpress_client.types import METHODS, Job

EXIT_OK, EXIT_GATE, EXIT_FAILED, EXIT_USAGE = 0, 1, 2, 3
PROG = "modelpress-client"


class UsageError(Exception):
    """A problem with the command line itself (exit 3)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--url", help="server URL (default: $MODELPRESS_URL, else http://127.0.0.1:8000)")
    common.add_argument("--token", help="API token (default: $MODELPRESS_TOKEN, which keeps it out of ps)")
    common.add_argument("--json", action="store_true", help="machine-readable output on stdout")

    parser = _Parser(
        prog=PROG,
        description="Compress ONNX models on a modelpress server and gate the result in CI.",
        epilog="exit codes: 0 ok, 1 a quality gate failed, 2 input rejected or job failed, "
        "3 usage or authentication error",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    submit = sub.add_parser("submit", parents=[common], help="upload a model and data, run a job, gate it")
    submit.add_argument("model", type=Path, help=".onnx file or .zip bundle with its external data")
    submit.add_argument("--data", required=True, help="'digits' (built in) or an .npz with x (and y)")
    submit.add_argument("--method", required=True, choices=METHODS)
    rank = submit.add_mutually_exclusive_group()
    rank.add_argument("--energy", type=float, help="keep ≥ this share of Σσ² per layer (0..1]")
    rank.add_argument("--target-macs", type=float, help="whole-model MACs after / before (0..1)")
    rank.add_argument("--target-params", type=float, help="whole-model params after / before (0..1)")
    submit.add_argument("--epochs", type=int, help="regularized training epochs (retraining methods)")
    submit.add_argument("--finetune-epochs", type=int, help="fine-tuning epochs on the compressed model")
    submit.add_argument("--strength", type=float, help="regularizer strength (per-method default)")
    submit.add_argument("--lr", type=float, help="learning rate")
    submit.add_argument("--lr-schedule", choices=["cosine", "constant"], help="step-size schedule (cosine)")
    submit.add_argument(
        "--strength-ramp", type=float, help="nuclear: share of training over which λ rises from 0"
    )
    submit.add_argument("--batch-size", type=int, help="training batch size")
    submit.add_argument("--seed", type=int, help="seed for data order and sampling")
    submit.add_argument("--distill", action="store_true", help="distill from the original model")
    submit.add_argument("--no-latency", action="store_true", help="skip latency measurement")
    submit.add_argument(
        "--wait", action="store_true", help="wait for the result (implied by gates and outputs)"
    )
    submit.add_argument("--timeout", type=float, help="give up waiting after this many seconds")
    gates = submit.add_argument_group("quality gates (exit 1 when one fails)")
    gates.add_argument("--max-accuracy-drop", type=float, metavar="X", help="top-1 before − after ≤ X")
    gates.add_argument("--min-macs-reduction", type=float, metavar="K", help="MACs before / after ≥ K")
    gates.add_argument(
        "--min-params-reduction",
        type=float,
        metavar="K",
        help="params before / after ≥ K (nonzeros for l1, prune, variational)",
    )
    gates.add_argument("--max-latency-ms", type=float, metavar="MS", help="batch-1 latency after ≤ MS")
    outputs = submit.add_argument_group("outputs")
    outputs.add_argument("--out", type=Path, help="write the compressed model here")
    outputs.add_argument("--report", type=Path, help="write report.json here")
    outputs.add_argument("--junit", type=Path, help="write a JUnit XML with one testcase per gate")

    status = sub.add_parser("status", parents=[common], help="a job's status and progress")
    status.add_argument("job", help="job id")
    wait = sub.add_parser("wait", parents=[common], help="wait for a job; exit 0 if it succeeded, else 2")
    wait.add_argument("job", help="job id")
    wait.add_argument("--timeout", type=float, help="give up after this many seconds")
    report = sub.add_parser("report", parents=[common], help="print (or save) a job's report")
    report.add_argument("job", help="job id")
    report.add_argument("-o", "--output", type=Path, help="also write report.json here")
    download = sub.add_parser("download", parents=[common], help="download an artifact of a job")
    download.add_argument("job", help="job id")
    download.add_argument(
        "--name", default="model.onnx", help="model.onnx, report.json, curve.csv or curve.png"
    )
    download.add_argument("-o", "--output", type=Path, help="file or folder (default: ./NAME)")
    listing = sub.add_parser("list", parents=[common], help="your jobs, newest first")
    listing.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    listing.add_argument("--limit", type=int, default=20, help="how many (default 20, at most 200)")
    cancel = sub.add_parser("cancel", parents=[common], help="cancel a queued or running job")
    cancel.add_argument("job", help="job id")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "submit": _submit,
        "status": _status,
        "wait": _wait,
        "report": _report,
        "download": _download,
        "list": _list,
        "cancel": _cancel,
    }
    try:
        return commands[args.command](args)
    except UsageError as exc:
        return _fail(EXIT_USAGE, str(exc))
    except errors.ConfigurationError as exc:
        return _fail(EXIT_USAGE, str(exc))
    except (errors.AuthenticationError, errors.PermissionDeniedError) as exc:
        return _fail(EXIT_USAGE, f"authentication failed: {exc.detail} Check MODELPRESS_TOKEN or --token.")
    except errors.APIError as exc:
        return _fail(EXIT_FAILED, str(exc))
    except errors.WaitTimeout as exc:
        return _fail(EXIT_FAILED, f"{exc}; it keeps running: `{PROG} wait {exc.job_id}` to follow it again")
    except OSError as exc:
        return _fail(EXIT_FAILED, f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
    except KeyboardInterrupt:
        return _fail(130, "interrupted")
    except Exception as exc:  # one line, never a traceback (unless MODELPRESS_LOG=debug)
        if os.environ.get("MODELPRESS_LOG", "").lower() == "debug":
            traceback.print_exc()
        return _fail(EXIT_FAILED, f"unexpected error: {type(exc).__name__}: {exc}")


def _fail(code: int, message: str) -> int:
    line = " ".join(message.split())
    print(f"{PROG}: {line}", file=sys.stderr)
    return code


def _client(args: argparse.Namespace) -> Client:
    return Client(url=args.url, token=args.token)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _stdout() -> Console:
    # a pipe or a CI log has no width; rich would assume 80 columns and wrap ids
    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else 160)


def _show_progress() -> bool:
    return sys.stderr.isatty()


def _spec(args: argparse.Namespace) -> tuple[dict[str, float] | None, dict[str, Any] | None]:
    rank = {
        k: v
        for k, v in (
            ("energy", args.energy),
            ("target_macs", args.target_macs),
            ("target_params", args.target_params),
        )
        if v is not None
    }
    training: dict[str, Any] = {
        k: v
        for k, v in (
            ("epochs", args.epochs),
            ("finetune_epochs", args.finetune_epochs),
            ("strength", args.strength),
            ("lr", args.lr),
            ("lr_schedule", args.lr_schedule),
            ("strength_ramp", args.strength_ramp),
            ("batch_size", args.batch_size),
            ("seed", args.seed),
        )
        if v is not None
    }
    if args.distill:
        training["distill"] = True
    return rank or None, training or None


def _submit(args: argparse.Namespace) -> int:
    if not args.model.is_file():
        raise UsageError(f"no model file at {args.model}")
    data_path = None if args.data == "digits" else Path(args.data)
    if data_path is not None and not data_path.is_file():
        raise UsageError(f"--data is neither 'digits' nor an existing .npz file: {args.data}")
    gate_args = {
        "max_accuracy_drop": args.max_accuracy_drop,
        "min_macs_reduction": args.min_macs_reduction,
        "min_params_reduction": args.min_params_reduction,
        "max_latency_ms": args.max_latency_ms,
    }
    wait = args.wait or any(v is not None for v in (*gate_args.values(), args.out, args.report, args.junit))
    rank, training = _spec(args)
    started = time.monotonic()
    with _client(args) as client:
        model = client.models.upload(args.model)
        dataset = (
            client.datasets.builtin("digits") if data_path is None else client.datasets.upload(data_path)
        )
        job = client.jobs.create(
            model.id,
            args.method,
            dataset.id,
            rank=rank,
            training=training,
            evaluation={"latency": not args.no_latency},
        )
        if not wait:
            if args.json:
                _print_json(job.model_dump(mode="json"))
            else:
                print(job.id)
            return EXIT_OK
        job = client.jobs.wait(job.id, progress=_show_progress(), timeout=args.timeout)
        if job.status != "succeeded":
            reason = _why(job)
            if args.junit:
                _write_text(
                    args.junit,
                    junit_xml(
                        [],
                        job_id=job.id,
                        method=args.method,
                        seconds=time.monotonic() - started,
                        job_error=reason,
                        not_run=[k.replace("_", "-") for k, v in gate_args.items() if v is not None],
                    ),
                )
            if args.json:
                _print_json({"job": job.model_dump(mode="json"), "exit_code": EXIT_FAILED})
            return _fail(EXIT_FAILED, reason)
        report = client.jobs.report(job.id)
        files: dict[str, str] = {}
        if args.out:
            files["model"] = str(client.jobs.download(job.id, "model.onnx", args.out))
        if args.report:
            files["report"] = str(client.jobs.download(job.id, "report.json", args.report))
    results = check_gates(report, **gate_args)
    failed = [r for r in results if not r.passed]
    code = EXIT_GATE if failed else EXIT_OK
    if args.junit:
        _write_text(
            args.junit,
            junit_xml(results, job_id=job.id, method=args.method, seconds=time.monotonic() - started),
        )
        files["junit"] = str(args.junit)
    if args.json:
        _print_json(
            {
                "job": job.model_dump(mode="json"),
                "report": report,
                "gates": [r.to_dict() for r in results],
                "files": files,
                "exit_code": code,
            }
        )
    else:
        _print_report(job, report)
        _print_gates(results)
        for kind, path in files.items():
            print(f"{kind}: {path}")
    for result in failed:
        print(f"{PROG}: gate failed: {result.name}: {result.message}", file=sys.stderr)
    return code


def _why(job: Job) -> str:
    if job.status == "cancelled":
        return f"job {job.id} was cancelled"
    if job.error is not None:
        return f"job {job.id} failed: {job.error.kind}: {job.error.detail}"
    return f"job {job.id} {job.status}"


def _write_text(path: Path, text: str) -> None:
    """Whole or not at all: a temporary file beside ``path``, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _number(value: float | None, fmt: str = "{:,}") -> str:
    return "n/a" if value is None else fmt.format(value)


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, before, after, after/before) for a person to read."""
    b, a = report.get("before") or {}, report.get("after") or {}
    ratios = report.get("ratios") or {}
    rows = [
        (label, _number(b.get(key)), _number(a.get(key)), _number(ratios.get(key), "{:.3f}"))
        for label, key in (
            ("parameters", "params"),
            ("nonzeros", "nonzeros"),
            ("MACs / sample", "macs"),
            ("file bytes", "file_bytes"),
        )
    ]
    before_ms, after_ms = b.get("latency_ms") or {}, a.get("latency_ms") or {}
    for batch in before_ms:
        rows.append(
            (
                f"latency ms, batch {batch}",
                _number(before_ms.get(batch), "{:.3f}"),
                _number(after_ms.get(batch), "{:.3f}"),
                _number(ratios.get(f"latency_b{batch}"), "{:.3f}"),
            )
        )
    before_acc, after_acc = b.get("accuracy") or {}, a.get("accuracy") or {}
    for key in ("top1", "top5"):
        if key in before_acc and key in after_acc:
            delta = after_acc[key] - before_acc[key]
            rows.append(
                (f"accuracy {key}", f"{before_acc[key]:.4f}", f"{after_acc[key]:.4f}", f"{delta:+.4f}")
            )
    fidelity = a.get("fidelity") or {}
    if "top1_agreement" in fidelity:
        rows.append(("top-1 agreement", "1.0000", f"{fidelity['top1_agreement']:.4f}", ""))
    return rows


def _print_report(job: Job, report: dict[str, Any]) -> None:
    if report.get("kind") == "sweep":
        _print_curve(job, report)
        return
    rank = report.get("rank") or {}
    how = ", ".join(f"{k} {v:g}" for k, v in rank.items())
    table = Table(
        "figure",
        "before",
        "after",
        "after/before",
        title=f"{job.id}: {report.get('method', job.method)}{f' ({how})' if how else ''}",
    )
    for row in summary_rows(report):
        table.add_row(*row)
    _stdout().print(table)


def _print_curve(job: Job, report: dict[str, Any]) -> None:
    metric = report.get("metric", "accuracy")
    table = Table(
        "method",
        "strength",
        "target",
        "params ratio",
        "MACs ratio",
        metric,
        title=f"{job.id}: sweep (baseline {metric} {_number(report.get('baseline_accuracy'), '{:.4f}')})",
    )
    for point in report.get("points") or []:
        table.add_row(
            str(point.get("method")),
            _number(point.get("strength"), "{:g}"),
            _number(point.get("target"), "{:g}"),
            _number(point.get("params_ratio"), "{:.3f}"),
            _number(point.get("macs_ratio"), "{:.3f}"),
            _number(point.get("accuracy"), "{:.4f}"),
        )
    _stdout().print(table)


def _print_gates(results: list[GateResult]) -> None:
    for result in results:
        mark = "PASS" if result.passed else "FAIL"
        print(f"{mark} {result.name}: {result.message}")


def _status_line(job: Job) -> str:
    p = job.progress
    parts = [job.id, job.kind, job.method or "", job.status]
    if not job.done and p.stage:
        parts.append(p.stage)
    if p.epoch is not None and not job.done:
        parts.append(f"epoch {p.epoch}")
    if p.fraction is not None and not job.done:
        parts.append(f"{p.fraction:.0%}")
    if p.eta_s is not None and not job.done:
        parts.append(f"eta {p.eta_s:.0f} s")
    if job.error is not None:
        parts.append(f"{job.error.kind}: {job.error.detail}")
    return "  ".join(x for x in parts if x)


def _status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.jobs.get(args.job)
    if args.json:
        _print_json(job.model_dump(mode="json"))
    else:
        print(_status_line(job))
    return EXIT_OK


def _wait(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.jobs.wait(args.job, progress=_show_progress(), timeout=args.timeout)
    if args.json:
        _print_json(job.model_dump(mode="json"))
    else:
        print(_status_line(job))
    return EXIT_OK if job.status == "succeeded" else _fail(EXIT_FAILED, _why(job))


def _report(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.jobs.get(args.job)
        report = client.jobs.report(args.job)
        if args.output:
            client.jobs.download(args.job, "report.json", args.output)
    if args.json:
        _print_json(report)
    else:
        _print_report(job, report)
    return EXIT_OK


def _download(args: argparse.Namespace) -> int:
    with _client(args) as client:
        path = client.jobs.download(args.job, args.name, args.output)
    if args.json:
        _print_json({"job": args.job, "name": args.name, "path": str(path)})
    else:
        print(path)
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 200:
        raise UsageError("--limit must be between 1 and 200")
    with _client(args) as client:
        page = client.jobs.list(status=args.status, limit=args.limit)
    if args.json:
        _print_json([job.model_dump(mode="json") for job in page.items])
        return EXIT_OK
    table = Table("id", "kind", "method", "status", "stage", "created")
    for job in page.items:
        table.add_row(
            job.id,
            job.kind,
            job.method or "",
            job.status,
            job.progress.stage or "",
            job.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    _stdout().print(table)
    return EXIT_OK


def _cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.jobs.cancel(args.job)
    if args.json:
        _print_json(job.model_dump(mode="json"))
    elif job.status == "running":
        print(f"{job.id}: cancel requested; it stops before its next training step")
    else:
        print(f"{job.id}: {job.status}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
