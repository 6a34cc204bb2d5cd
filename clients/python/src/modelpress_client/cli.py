"""``modelpress-client``: submit, follow and gate compression jobs from a shell or CI.

Exit codes: 0 success (every gate passed), 1 a quality gate failed, 2 the input was rejected,
the job failed or the server could not be reached (one line on stderr, no traceback), 3 usage
or authentication error, 130 interrupted (the job keeps running; the message says how to
resume). ``submit`` and ``gate`` write their ``--junit`` file and ``--json`` document on every
one of those paths, so a CI step that publishes them ``if: always()`` always finds them.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from modelpress_client import errors
from modelpress_client._client import Client
from modelpress_client._render import print_gates, print_report, status_line, stdout
from modelpress_client.bundle import BundleError
from modelpress_client.gates import check_gates, junit_xml
from modelpress_client.resources import external_data_of
from modelpress_client.types import METHODS, Job

EXIT_OK, EXIT_GATE, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
PROG = "modelpress-client"
GATES = ("max_accuracy_drop", "min_macs_reduction", "min_params_reduction", "max_latency_ms")
OUTPUTS = ("out", "report", "junit")


class UsageError(Exception):
    """A problem with the command line itself (exit 3)."""


class JobNotSucceeded(Exception):
    """The job ended failed or cancelled (exit 2)."""

    def __init__(self, job: Job) -> None:
        super().__init__(_why(job))
        self.job = job


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise UsageError(message)


# argparse dest -> (part, key) of the job spec. A flag that sets a spec field is declared once,
# with `_spec_option`; `spec_from_args` needs no change when one is added.
SPEC_OPTIONS: dict[str, tuple[str, str]] = {}


def _spec_option(parser: Any, flag: str, part: str, key: str, **options: Any) -> None:
    action = parser.add_argument(flag, **options)
    SPEC_OPTIONS[action.dest] = (part, key)


def spec_from_args(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The ``rank``, ``training`` and ``evaluation`` parts the flags set (unset flags are left
    to the server's per-method defaults)."""
    parts: dict[str, dict[str, Any]] = {}
    for dest, (part, key) in SPEC_OPTIONS.items():
        value = getattr(args, dest, None)
        if value is not None:
            parts.setdefault(part, {})[key] = value
    return parts


def _add_spec_options(submit: argparse.ArgumentParser) -> None:
    rank = submit.add_mutually_exclusive_group()
    _spec_option(rank, "--energy", "rank", "energy", type=float, help="keep ≥ this share of Σσ² per layer")
    _spec_option(rank, "--target-macs", "rank", "target_macs", type=float, help="MACs after / before (0..1)")
    _spec_option(
        rank, "--target-params", "rank", "target_params", type=float, help="params after / before (0..1)"
    )
    _spec_option(
        rank,
        "--max-drop",
        "rank",
        "max_drop",
        type=float,
        help="the largest reduction within this top-1 drop",
    )
    _spec_option(
        submit,
        "--weighting",
        "rank",
        "weighting",
        choices=["activations", "none"],
        help="with a rank flag: truncate by the layers' outputs on the data (the default) or by weights",
    )
    _spec_option(
        submit,
        "--quantize",
        "quantize",
        "quantize",
        choices=["none", "dynamic", "static"],
        help="INT8 on top (static calibrates on the dataset)",
    )
    training = (
        ("--epochs", "epochs", int, "regularized training epochs (retraining methods)"),
        ("--finetune-epochs", "finetune_epochs", int, "fine-tuning epochs on the compressed model"),
        ("--strength", "strength", float, "regularizer strength (per-method default)"),
        ("--lr", "lr", float, "learning rate"),
        ("--strength-ramp", "strength_ramp", float, "nuclear: share of training over which λ rises"),
        ("--batch-size", "batch_size", int, "training batch size"),
        ("--seed", "seed", int, "seed for data order and sampling"),
        ("--scores", "output", str, "the model output holding the class scores (default: found)"),
    )
    for flag, key, kind, text in training:
        _spec_option(submit, flag, "training", key, type=kind, help=text)
    _spec_option(
        submit,
        "--lr-schedule",
        "training",
        "lr_schedule",
        choices=["cosine", "constant"],
        help="step-size schedule (cosine)",
    )
    _spec_option(
        submit,
        "--distill",
        "training",
        "distill",
        action="store_true",
        default=None,
        help="distill from the original model",
    )
    _spec_option(
        submit,
        "--no-latency",
        "evaluation",
        "latency",
        action="store_false",
        default=None,
        help="skip latency measurement",
    )


def _add_gates_and_outputs(parser: argparse.ArgumentParser) -> None:
    gates = parser.add_argument_group("quality gates (exit 1 when one fails)")
    gates.add_argument("--max-accuracy-drop", type=float, metavar="X", help="top-1 before − after ≤ X")
    gates.add_argument("--min-macs-reduction", type=float, metavar="K", help="MACs before / after ≥ K")
    gates.add_argument(
        "--min-params-reduction",
        type=float,
        metavar="K",
        help="params before / after ≥ K (nonzeros for l1, prune, variational)",
    )
    gates.add_argument("--max-latency-ms", type=float, metavar="MS", help="batch-1 latency after ≤ MS")
    outputs = parser.add_argument_group("outputs (written on every exit path: --junit, --json)")
    outputs.add_argument("--out", type=Path, help="write the compressed model here")
    outputs.add_argument("--report", type=Path, help="write report.json here")
    outputs.add_argument("--junit", type=Path, help="write a JUnit XML with one testcase per gate")
    _add_wait_timeout(parser)


def _add_wait_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait-timeout",
        "--timeout",
        dest="wait_timeout",
        type=float,
        metavar="S",
        help="give up waiting after S seconds; until then a server restart or a lost connection "
        "is waited out (default: no limit on the job, 15 min on an unreachable server)",
    )


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--url", help="server URL (default: $MODELPRESS_URL, else http://127.0.0.1:8000)")
    common.add_argument("--token", help="API token (default: $MODELPRESS_TOKEN, which keeps it out of ps)")
    common.add_argument("--json", action="store_true", help="machine-readable output on stdout")

    parser = _Parser(
        prog=PROG,
        description="Compress ONNX models on a modelpress server and gate the result in CI.",
        epilog="exit codes: 0 ok, 1 a quality gate failed, 2 input rejected or job failed, "
        "3 usage or authentication error, 130 interrupted",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    submit = sub.add_parser("submit", parents=[common], help="upload a model and data, run a job, gate it")
    submit.add_argument("model", type=Path, help=".onnx (its external-data files are bundled) or .zip bundle")
    submit.add_argument("--data", required=True, help="'digits' (built in) or an .npz with x (and y)")
    submit.add_argument("--method", required=True, choices=METHODS)
    _add_spec_options(submit)
    submit.add_argument("--wait", action="store_true", help="wait for the result (implied by gates, outputs)")
    _add_gates_and_outputs(submit)

    gate = sub.add_parser(
        "gate", parents=[common], help="wait for an existing job, then gate it and write its outputs"
    )
    gate.add_argument("job", help="job id")
    _add_gates_and_outputs(gate)

    status = sub.add_parser("status", parents=[common], help="a job's status and progress")
    status.add_argument("job", help="job id")
    wait = sub.add_parser("wait", parents=[common], help="wait for a job; exit 0 if it succeeded, else 2")
    wait.add_argument("job", help="job id")
    _add_wait_timeout(wait)
    report = sub.add_parser("report", parents=[common], help="print (or save) a job's report")
    report.add_argument("job", help="job id")
    report.add_argument("-o", "--output", type=Path, help="also write report.json here")
    download = sub.add_parser("download", parents=[common], help="download an artifact of a job")
    download.add_argument("job", help="job id")
    download.add_argument(
        "--name",
        default="model.onnx",
        choices=["model.onnx", "report.json", "curve.png", "curve.csv", "curve.json"],
        help="which artifact (default model.onnx)",
    )
    download.add_argument("-o", "--output", type=Path, help="file or folder (default: ./NAME)")
    listing = sub.add_parser("list", parents=[common], help="your jobs, newest first")
    listing.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    listing.add_argument("--limit", type=int, default=20, help="how many (default 20, at most 200)")
    cancel = sub.add_parser("cancel", parents=[common], help="cancel a queued or running job")
    cancel.add_argument("job", help="job id")
    return parser


@dataclass
class Run:
    """What a command has done so far: enough to report any way it ends."""

    args: argparse.Namespace
    started: float = field(default_factory=time.monotonic)
    job_id: str | None = None
    job: Job | None = None

    def seconds(self) -> float:
        return time.monotonic() - self.started


_INTERRUPTED = threading.Event()


def _on_interrupt(signum: int, frame: Any) -> None:
    """Ctrl-C: remembered, so that whatever error the interrupted request then surfaces (a
    broken pipe, a reset connection) still ends the command as interrupted."""
    _INTERRUPTED.set()
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_interrupt)
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        run = Run(_outputs_only(argv))
        return _failed(run, EXIT_USAGE, f"usage: {exc}", {"kind": "usage"})
    commands: dict[str, Callable[[Run], int]] = {
        "submit": _submit,
        "gate": _gate,
        "status": _status,
        "wait": _wait,
        "report": _report,
        "download": _download,
        "list": _list,
        "cancel": _cancel,
    }
    run = Run(args)
    try:
        return commands[args.command](run)
    except BaseException as exc:  # every way out: one line, and the CI outputs
        if isinstance(exc, SystemExit):
            raise
        if os.environ.get("MODELPRESS_LOG", "").strip().lower() == "debug":
            traceback.print_exc()  # the one switch that shows a traceback
        code, message, error = _classify(exc, run)
        return _failed(run, code, message, error)


def _outputs_only(argv: Sequence[str]) -> argparse.Namespace:
    """``--junit`` and ``--json`` of a command line that did not parse, so that even a usage
    error leaves the files a CI step publishes."""
    lenient = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    lenient.add_argument("--junit", type=Path)
    lenient.add_argument("--json", action="store_true")
    for gate in GATES:  # named in the JUnit file as not run
        lenient.add_argument("--" + gate.replace("_", "-"), dest=gate)
    try:
        known, _ = lenient.parse_known_args(argv)
    except (argparse.ArgumentError, SystemExit):
        known = argparse.Namespace(junit=None, json=False, **dict.fromkeys(GATES))
    known.command = next((a for a in argv if not a.startswith("-")), None)
    return known


def _classify(exc: BaseException, run: Run) -> tuple[int, str, dict[str, Any]]:
    """(exit code, the one line for stderr, the error as JSON) for whatever ended the command."""
    resume = _resume_hint(run)
    if isinstance(exc, KeyboardInterrupt) or _INTERRUPTED.is_set():
        if run.job_id is None:
            message = "interrupted before the server confirmed a job; see `modelpress-client list`"
        else:
            message = f"interrupted; job {run.job_id} keeps running on the server. {resume}"
        return EXIT_INTERRUPTED, message, {"kind": "interrupted"}
    if isinstance(exc, UsageError | errors.ConfigurationError):
        return EXIT_USAGE, str(exc), {"kind": "usage"}
    if isinstance(exc, errors.AuthenticationError | errors.PermissionDeniedError):
        message = f"authentication failed: {exc.detail} Check MODELPRESS_TOKEN or --token."
        return EXIT_USAGE, message, _api_error(exc)
    if isinstance(exc, JobNotSucceeded):
        kind = exc.job.error.kind if exc.job.error is not None else exc.job.status
        return EXIT_FAILED, str(exc), {"kind": kind, "message": str(exc)}
    if isinstance(exc, errors.WaitTimeout):
        return EXIT_FAILED, f"{exc}; it keeps running. {resume}", {"kind": "wait-timeout"}
    if isinstance(exc, errors.APIConnectionError) and run.job_id is not None:
        return EXIT_FAILED, f"{exc} Job {run.job_id} may still be running. {resume}", _api_error(exc)
    if isinstance(exc, errors.APIError):
        return EXIT_FAILED, str(exc), _api_error(exc)
    if isinstance(exc, BundleError):
        return EXIT_FAILED, str(exc), {"kind": "bundle"}
    if isinstance(exc, OSError):
        message = f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
        return EXIT_FAILED, message, {"kind": "os-error"}
    return EXIT_FAILED, f"unexpected error: {type(exc).__name__}: {exc}", {"kind": "unexpected"}


def _api_error(exc: errors.APIError) -> dict[str, Any]:
    if isinstance(exc, errors.APIStatusError):
        return {"kind": exc.kind, "status": exc.status, "request_id": exc.request_id}
    return {"kind": "connection"}


def _resume_hint(run: Run) -> str:
    """The command that picks the job up again with the same gates and outputs."""
    if run.job_id is None:
        return ""
    args = run.args
    words = [PROG, "gate", run.job_id]
    for dest in (*GATES, *OUTPUTS, "wait_timeout"):
        value = getattr(args, dest, None)
        if value is not None:
            words += ["--" + dest.replace("_", "-"), str(value)]
    if getattr(args, "json", False):
        words.append("--json")
    return f"Resume with `{shlex.join(words)}`, or stop it with `{PROG} cancel {run.job_id}`."


def _failed(run: Run, code: int, message: str, error: dict[str, Any]) -> int:
    """Say why on stderr and, for CI, write the JUnit file (one error case) and the JSON."""
    args = run.args
    junit = getattr(args, "junit", None)
    if junit is not None:
        gates = [g.replace("_", "-") for g in GATES if getattr(args, g, None) is not None]
        method = getattr(args, "method", None) or (run.job.method if run.job else None)
        xml = junit_xml(
            [], job_id=run.job_id, method=method, seconds=run.seconds(), job_error=message, not_run=gates
        )
        try:
            _write_text(junit, xml)
        except OSError as exc:
            print(f"{PROG}: could not write {junit}: {exc}", file=sys.stderr)
    if getattr(args, "json", False):
        job = run.job.model_dump(mode="json") if run.job is not None else None
        error = {"message": " ".join(message.split()), **error}
        _print_json({"job_id": run.job_id, "job": job, "error": error, "exit_code": code})
    return _fail(code, message)


def _fail(code: int, message: str) -> int:
    line = " ".join(message.split())
    print(f"{PROG}: {line}", file=sys.stderr)
    return code


def _client(args: argparse.Namespace) -> Client:
    return Client(url=args.url, token=args.token)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _show_progress() -> bool:
    return sys.stderr.isatty()


def _check_inputs(args: argparse.Namespace) -> Path | None:
    """The dataset file (None for digits), after checking that both inputs exist."""
    if not args.model.is_file():
        raise UsageError(f"no model file at {args.model}")
    if args.model.suffix.lower() not in (".onnx", ".zip"):
        raise UsageError(f"{args.model} is neither an .onnx file nor a .zip bundle")
    data = None if args.data == "digits" else Path(args.data)
    if data is not None and not data.is_file():
        raise UsageError(f"--data is neither 'digits' nor an existing .npz file: {args.data}")
    return data


def _validate(client: Client, method: str, spec: dict[str, dict[str, Any]]) -> None:
    """The server's verdict on the spec, before anything is uploaded: a bad flag is a usage error."""
    try:
        client.jobs.validate(
            method,
            rank=spec.get("rank"),
            training=spec.get("training"),
            evaluation=spec.get("evaluation"),
            quantize=spec.get("quantize", {}).get("quantize"),
        )
    except errors.InvalidRequest as exc:
        fields = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', [])[2:]) or method}: "
            f"{str(e.get('msg')).removeprefix('Value error, ')}"
            for e in exc.errors
        )
        raise UsageError(f"the job spec is invalid: {fields or exc.detail}") from exc


def _waits(args: argparse.Namespace) -> bool:
    asked = [getattr(args, g) for g in GATES] + [getattr(args, o) for o in OUTPUTS]
    return bool(args.wait) or any(v is not None for v in asked)


def _submit(run: Run) -> int:
    args = run.args
    data = _check_inputs(args)
    spec = spec_from_args(args)
    with _client(args) as client:
        _validate(client, args.method, spec)
        bundled = external_data_of(args.model)
        if bundled:
            names = ", ".join(bundled)
            print(
                f"{PROG}: {args.model.name} keeps its weights in {names}; "
                f"uploading them together as {args.model.stem}.zip",
                file=sys.stderr,
            )
        model = client.models.upload(args.model)
        dataset = client.datasets.builtin("digits") if data is None else client.datasets.upload(data)
        job = client.jobs.create(
            model.id,
            args.method,
            dataset.id,
            rank=spec.get("rank"),
            training=spec.get("training"),
            evaluation=spec.get("evaluation"),
            quantize=spec.get("quantize", {}).get("quantize"),
        )
        run.job_id, run.job = job.id, job
        if not _waits(args):
            _print_json(job.model_dump(mode="json")) if args.json else print(job.id)
            return EXIT_OK
        return _conclude(client, run, job.id)


def _gate(run: Run) -> int:
    run.job_id = run.args.job
    with _client(run.args) as client:
        return _conclude(client, run, run.args.job)


def _conclude(client: Client, run: Run, job_id: str) -> int:
    """Wait for the job, then fetch its report and outputs and apply the gates."""
    args = run.args
    job = client.jobs.wait(job_id, progress=_show_progress(), timeout=args.wait_timeout)
    run.job = job
    if job.status != "succeeded":
        raise JobNotSucceeded(job)
    report = client.jobs.report(job.id)
    files: dict[str, str] = {}
    if args.out:
        files["model"] = str(client.jobs.download(job.id, "model.onnx", args.out))
    if args.report:
        files["report"] = str(client.jobs.download(job.id, "report.json", args.report))
    results = check_gates(report, **{g: getattr(args, g) for g in GATES})
    failed = [r for r in results if not r.passed]
    code = EXIT_GATE if failed else EXIT_OK
    if args.junit:
        _write_text(args.junit, junit_xml(results, job_id=job.id, method=job.method, seconds=run.seconds()))
        files["junit"] = str(args.junit)
    if args.json:
        gates = [r.to_dict() for r in results]
        dump = job.model_dump(mode="json")
        _print_json({"job": dump, "report": report, "gates": gates, "files": files, "exit_code": code})
    else:
        print_report(job, report)
        print_gates(results)
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


def _status(run: Run) -> int:
    with _client(run.args) as client:
        job = client.jobs.get(run.args.job)
    _print_json(job.model_dump(mode="json")) if run.args.json else print(status_line(job))
    return EXIT_OK


def _wait(run: Run) -> int:
    args = run.args
    run.job_id = args.job
    with _client(args) as client:
        job = client.jobs.wait(args.job, progress=_show_progress(), timeout=args.wait_timeout)
    run.job = job
    _print_json(job.model_dump(mode="json")) if args.json else print(status_line(job))
    return EXIT_OK if job.status == "succeeded" else _fail(EXIT_FAILED, _why(job))


def _report(run: Run) -> int:
    args = run.args
    with _client(args) as client:
        job = client.jobs.get(args.job)
        report = client.jobs.report(args.job)
        if args.output:
            client.jobs.download(args.job, "report.json", args.output)
    _print_json(report) if args.json else print_report(job, report)
    return EXIT_OK


def _download(run: Run) -> int:
    args = run.args
    with _client(args) as client:
        path = client.jobs.download(args.job, args.name, args.output)
    if args.json:
        _print_json({"job": args.job, "name": args.name, "path": str(path)})
    else:
        print(path)
    return EXIT_OK


def _list(run: Run) -> int:
    args = run.args
    if not 1 <= args.limit <= 200:
        raise UsageError("--limit must be between 1 and 200")
    with _client(args) as client:
        page = client.jobs.list(status=args.status, limit=args.limit)
    if args.json:
        _print_json([job.model_dump(mode="json") for job in page.items])
        return EXIT_OK
    from rich.table import Table

    table = Table("id", "kind", "method", "status", "stage", "created")
    for job in page.items:
        created = job.created_at.strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(job.id, job.kind, job.method or "", job.status, job.progress.stage or "", created)
    stdout().print(table)
    return EXIT_OK


def _cancel(run: Run) -> int:
    with _client(run.args) as client:
        job = client.jobs.cancel(run.args.job)
    if run.args.json:
        _print_json(job.model_dump(mode="json"))
    elif job.status == "running":
        print(f"{job.id}: cancel requested; it stops before its next training step")
    else:
        print(f"{job.id}: {job.status}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
