"""The zoo: does modelpress work on the models people actually export?

Builds the models of ``bench/zoo_models.py`` (timm, torchvision, transformers with random
weights, scikit-learn through skl2onnx; nothing downloaded), exports each torch model three
ways (dynamo with a fixed batch of 1, dynamo with a dynamic batch, the TorchScript exporter),
caches them in ``bench/.cache/zoo/`` with a small generated dataset each, then runs the
command line a user would run, one subprocess per run with a timeout:

- ``modelpress inspect --json``
- ``modelpress compress --method svd --target-macs 0.5 --data D``, then the fidelity of the
  artifact against the original on the same inputs (onnxruntime, the scores output: top-1
  agreement over its last axis and max |Δlogit|) and the share of the
  original MACs in layers svd left unfactorized;
- every retraining method for one epoch: ``nuclear``, ``l2``, ``group_lasso`` at
  ``--target-macs 0.5``, ``l1`` and ``variational`` at ``--target-params 0.5``; and ``prune``.

Each run is ``ok`` (exit 0), ``refused`` (exit 2 with a typed refusal: the reason is kept),
or ``failed`` (a ``job-failed`` error, any other exit, or the timeout). Results go to
``bench/results/zoo.json`` and the matrix to ``docs/zoo.md``.

    .venv/bin/python bench/zoo.py [--only REGEX] [--methods svd,nuclear] [--jobs N]
                                  [--timeout S] [--render-only]

``--only``/``--methods`` runs write ``bench/.cache/zoo.partial.json`` and leave the committed
results alone. Needs the ``bench`` extra (``make bench`` installs it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import zoo_models  # noqa: E402

from compressors import METHODS as REGISTERED  # noqa: E402

CACHE = HERE / ".cache" / "zoo"
RESULTS = HERE / "results" / "zoo.json"
PARTIAL = HERE / ".cache" / "zoo.partial.json"
DOCS = ROOT / "docs" / "zoo.md"
METHODS = ("svd", "nuclear", "l2", "l1", "group_lasso", "variational", "prune")  # the matrix's columns
# every method is asked for half of what it can shrink: MACs, or params where it only sparsifies
RANK_FLAGS = {method: [f"--target-{REGISTERED[method].sweep_metric}", "0.5"] for method in METHODS}
TRAINED = {method for method in METHODS if REGISTERED[method].retrains}


def artifacts(only: str | None) -> list[dict[str, Any]]:
    """Every (model, export) of the zoo, exported and with its dataset, cached on disk."""
    entries = []
    for model in zoo_models.TORCH_MODELS:
        for kind in model.exports:
            entries.append({"model": model.name, "source": model.source, "export": kind, "zoo": model})
    for name in zoo_models.SKLEARN_MODELS:
        entries.append({"model": name, "source": "skl2onnx", "export": "skl2onnx", "zoo": None})
    if only:
        entries = [e for e in entries if re.search(only, f"{e['model']}/{e['export']}")]
    for entry in entries:
        _materialize(entry)
    return entries


def _materialize(entry: dict[str, Any]) -> None:
    folder = CACHE / entry["model"] / entry["export"]
    onnx_path, data_path = folder / "model.onnx", folder / "data.npz"
    entry.update(path=onnx_path, data=data_path, export_error=None)
    if onnx_path.exists() and data_path.exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    try:
        if entry["zoo"] is None:
            zoo_models.export_sklearn(entry["model"], onnx_path)
            zoo_models.sklearn_dataset(data_path)
        else:
            zoo_models.export_torch(entry["zoo"], entry["export"], onnx_path)
            zoo_models.dataset(entry["zoo"].inputs, data_path)
    except Exception as exc:  # the exporter itself refused: recorded, not ours to fix
        entry["export_error"] = f"{type(exc).__name__}: {_first_line(str(exc))}"


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return (lines[0] if lines else "")[:400]


def cli(args: list[str], timeout: float) -> tuple[int | None, str, str, float]:
    """Run ``modelpress ARGS`` as a user would; (exit code or None on timeout, stdout, stderr, s)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "service.cli", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=ROOT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, "", f"timed out after {timeout:.0f} s", time.perf_counter() - start
    return done.returncode, done.stdout, done.stderr, time.perf_counter() - start


def outcome(code: int | None, stderr: str) -> dict[str, Any]:
    """ok / refused (a typed refusal) / failed (job-failed, a crash or the timeout)."""
    if code == 0:
        return {"status": "ok"}
    line = next((ln for ln in reversed(stderr.strip().splitlines()) if ln.startswith("modelpress: ")), "")
    match = re.match(r"modelpress: ([a-z-]+): (.*)", line)
    if code == 2 and match and match.group(1) != "job-failed":
        return {"status": "refused", "kind": match.group(1), "reason": match.group(2)[:400]}
    tail = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    error = f"{match.group(1)}: {match.group(2)}" if match else (tail[-1] if tail else f"exit {code}")
    return {"status": "failed", "error": error[:400], "exit": code}


def run_inspect(entry: dict[str, Any], timeout: float) -> dict[str, Any]:
    code, out, err, seconds = cli(["inspect", str(entry["path"]), "--json"], timeout)
    result = {**outcome(code, err), "seconds": round(seconds, 1)}
    if code == 0:
        info = json.loads(out)
        result.update(
            retrainable=info.get("retrainable"),
            retrainable_reason=info.get("retrainable_reason") or None,
            opset=info.get("opset"),
            params=info.get("params"),
            macs=info.get("macs"),
            inputs=[[i["name"], i["dtype"], i["shape"]] for i in info.get("inputs", [])],
            outputs=[[o["name"], o["dtype"], o["shape"]] for o in info.get("outputs", [])],
        )
    return result


def run_method(entry: dict[str, Any], method: str, timeout: float) -> dict[str, Any]:
    out_dir = CACHE / "runs" / entry["model"] / entry["export"]
    out_dir.mkdir(parents=True, exist_ok=True)
    artifact, report = out_dir / f"{method}.onnx", out_dir / f"{method}.report.json"
    for stale in (artifact, report):
        stale.unlink(missing_ok=True)
    args = ["compress", str(entry["path"]), "--method", method, *RANK_FLAGS[method]]
    args += ["--data", str(entry["data"]), "-o", str(artifact), "--report", str(report), "--no-latency"]
    if method in TRAINED:
        args += ["--epochs", "1"]
    code, _, err, seconds = cli(args, timeout)
    result = {**outcome(code, err), "seconds": round(seconds, 1)}
    if code != 0 and artifact.exists():
        result["artifact_written"] = True  # the failure came after the compressed model was saved
    if report.exists():
        data = json.loads(report.read_text())
        result["ratios"] = {k: _round(data["ratios"].get(k)) for k in ("params", "nonzeros", "macs")}
        if method == "svd":
            result["unfactorized_macs_share"] = _unfactorized_share(data)
    if method == "svd" and artifact.exists():
        try:
            result["fidelity"] = fidelity(entry["path"], artifact, entry["data"])
        except Exception as exc:
            result["fidelity_error"] = f"{type(exc).__name__}: {_first_line(str(exc))}"
    return result


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _unfactorized_share(report: dict[str, Any]) -> float | None:
    """Share of the original MACs in layers the run left as they were."""
    total = report["before"]["macs"]
    if not total:
        return None
    factorized = sum(row["macs_before"] for row in report["layers"] if row.get("rank") is not None)
    return round(1.0 - factorized / total, 4)


def fidelity(original: Path, compressed: Path, data: Path) -> dict[str, float]:
    """Top-1 agreement (over the last axis) and max |Δ| of the scores output (the one
    ``compressors.onnx.outputs.score_output`` finds: a label output or a ZipMap is skipped)."""
    a, b = _scores(original, data), _scores(compressed, data)
    a2, b2 = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    return {
        "top1_agreement": round(float(np.mean(a2.argmax(1) == b2.argmax(1))), 4),
        "max_abs_logit_diff": float(f"{float(np.max(np.abs(a2 - b2))):.4g}"),
    }


def _scores(model: Path, data: Path) -> np.ndarray:
    import onnx

    from compressors.onnx import metrics
    from compressors.onnx.outputs import score_output

    proto = onnx.load(str(model))
    arrays = dict(np.load(data))
    names = [i.name for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    feeds = [arrays.get(name, arrays["x"]) for name in names]
    return metrics.predict(proto, feeds, output=score_output(proto))


def run_entry(entry: dict[str, Any], methods: list[str], timeout: float) -> dict[str, Any]:
    row: dict[str, Any] = {k: entry[k] for k in ("model", "source", "export")}
    if entry["export_error"]:
        row["export_error"] = entry["export_error"]
        return row
    row["inspect"] = run_inspect(entry, timeout)
    row["runs"] = {method: run_method(entry, method, timeout) for method in methods}
    print(
        f"{entry['model']:28} {entry['export']:15} "
        + " ".join(f"{m}={r['status']}" for m, r in row["runs"].items()),
        flush=True,
    )
    return row


def counts(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per method (and inspect): how many runs were ok, refused, failed."""
    table: dict[str, dict[str, int]] = {}
    for row in rows:
        cells = {"inspect": row.get("inspect"), **row.get("runs", {})}
        for name, cell in cells.items():
            if cell is None:
                continue
            slot = table.setdefault(name, {"ok": 0, "refused": 0, "failed": 0})
            slot[cell["status"]] += 1
    return table


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    return done.stdout.strip() or "unknown"


def save(rows: list[dict[str, Any]], path: Path, seconds: float, history: bool = True) -> dict[str, Any]:
    previous = json.loads(path.read_text()) if path.exists() and history else {}
    runs = previous.get("history", [])
    result = {
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _commit(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)",
        "seconds": round(seconds),
        "versions": _versions(),
        "counts": counts(rows),
        "rows": rows,
    }
    result["history"] = [*runs, {k: result[k] for k in ("generated", "commit", "counts")}]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result


def merge(parts: list[Path]) -> dict[str, Any]:
    """The committed results with every cell the partial runs ``parts`` measured replaced;
    the cells they did not rerun keep the earlier result, marked ``carried`` with its commit."""
    base = json.loads(RESULTS.read_text())
    rows = {(r["model"], r["export"]): r for r in base["rows"]}
    for row in rows.values():
        for name, cell in [("inspect", row.get("inspect")), *row.get("runs", {}).items()]:
            if cell is not None and name != "inspect":
                cell.setdefault("carried", base["commit"])
    loaded = [json.loads(part.read_text()) for part in parts]
    for part in loaded:
        for new in part["rows"]:
            row = rows.setdefault((new["model"], new["export"]), {**new, "runs": {}})
            row.pop("export_error", None)
            row.update({k: v for k, v in new.items() if k != "runs"})
            row.setdefault("runs", {}).update(new.get("runs", {}))
    merged = list(rows.values())
    latest = loaded[-1]
    result = {
        **{k: latest[k] for k in ("generated", "commit", "machine", "versions")},
        "seconds": sum(part["seconds"] for part in loaded),
        "merged_from": base["commit"],
        "parts": [{k: part[k] for k in ("generated", "commit", "seconds")} for part in loaded],
        "counts": counts(merged),
        "rows": merged,
    }
    result["history"] = [*base.get("history", []), {k: result[k] for k in ("generated", "commit", "counts")}]
    RESULTS.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result


def _versions() -> dict[str, str]:
    from importlib import metadata

    names = ("torch", "torchvision", "timm", "transformers", "skl2onnx", "onnx", "onnxruntime", "onnx2torch")
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


class Notes:
    """Numbered footnotes for refusal reasons and failures, so the matrix stays narrow."""

    def __init__(self) -> None:
        self.keys: dict[tuple[str, str], str] = {}
        self.first: dict[str, str] = {}  # label -> the first message it stands for, verbatim
        self.uses: dict[str, int] = {}

    def mark(self, prefix: str, text: str) -> str:
        key = (prefix, re.sub(r"\d+", "N", text))  # messages differing only in numbers share one
        if key not in self.keys:
            label = f"{prefix}{sum(1 for p, _ in self.keys if p == prefix) + 1}"
            self.keys[key], self.first[label] = label, text.replace("|", "\\|")
        label = self.keys[key]
        self.uses[label] = self.uses.get(label, 0) + 1
        return label

    def lines(self) -> list[str]:
        return [f"- **{label}** ({self.uses[label]}×): {text}" for label, text in self.first.items()]


def cell(result: dict[str, Any] | None, notes: Notes) -> str:
    if result is None:
        return ""
    carried = " ‡" if result.get("carried") else ""
    if result["status"] == "ok":
        return "ok" + carried
    if result["status"] == "refused":
        return f"refused {notes.mark('R', result['kind'] + ': ' + result['reason'])}{carried}"
    after = " (artifact written)" if result.get("artifact_written") else ""
    return f"**failed** {notes.mark('F', result['error'])}{after}{carried}"


def _svd_cells(svd: dict[str, Any] | None) -> list[str]:
    if not svd or "fidelity" not in svd:
        return ["", "", ""]
    f, share = svd["fidelity"], svd.get("unfactorized_macs_share")
    return [
        f"{f['top1_agreement']:.3f}",
        f"{f['max_abs_logit_diff']:.3g}",
        "" if share is None else f"{share:.2f}",
    ]


def _inspect_cell(result: dict[str, Any] | None, notes: Notes) -> str:
    if result is None or result["status"] != "ok":
        return cell(result, notes)
    if result.get("retrainable"):
        return "yes"
    return f"no {notes.mark('N', result.get('retrainable_reason') or '')}"


def matrix(rows: list[dict[str, Any]], methods: list[str], notes: Notes) -> list[str]:
    head = ["model", "export", "retrainable", *methods]
    if "svd" in methods:
        at = head.index("svd") + 1
        head[at:at] = ["svd top-1 agr.", "svd max \\|Δ\\|", "MACs left whole"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        if row.get("export_error"):
            text = f"export failed {notes.mark('E', row['export_error'])}"
            lines.append(f"| {row['model']} | {row['export']} | {text} |" + " |" * (len(head) - 3))
            continue
        runs = row.get("runs", {})
        cells = [row["model"], row["export"], _inspect_cell(row.get("inspect"), notes)]
        for method in methods:
            cells.append(cell(runs.get(method), notes))
            if method == "svd":
                cells += _svd_cells(runs.get("svd"))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render(result: dict[str, Any]) -> str:
    rows = result["rows"]
    methods = [m for m in METHODS if any(m in r.get("runs", {}) for r in rows)]
    notes = Notes()
    table = matrix(rows, methods, notes)
    versions = ", ".join(f"{k} {v}" for k, v in result["versions"].items())
    out = [
        "# The zoo: models people export, through modelpress",
        "",
        "Written by `bench/zoo.py` (`make bench` installs the `bench` extra: timm, transformers, "
        "skl2onnx). Every model is built with random weights (nothing downloaded), exported with "
        "dynamo at a fixed batch of 1 (`dynamo-fixed`), dynamo with a dynamic batch "
        "(`dynamo-dynamic`) and the TorchScript exporter (`torchscript`, batch 1); scikit-learn "
        "MLPs go through skl2onnx. Each run is the command line a user types, in its own "
        "process: `modelpress inspect`, `modelpress compress --method svd --target-macs 0.5`, "
        "and one epoch (`--epochs 1`) of each retraining method (`nuclear`, `l2`, "
        "`group_lasso` at `--target-macs 0.5`; `l1`, `variational` at `--target-params 0.5`) "
        "and `prune`, on a generated 64-sample dataset: one array per model input, named after "
        "it, of the input's dtype and shape (token ids and attention masks for the transformers "
        "text models), with 10-class labels `y`, except for the GPT-2 language model, which "
        "has no labels and so is distilled position by position from the original.",
        "",
        "*ok*: exit 0. *refused*: a typed refusal (exit 2), reason below. *failed*: anything "
        "else (a `job-failed` error from inside the library, a crash, the timeout). svd "
        "fidelity compares the artifact with the original on the same inputs (the scores "
        "output: skl2onnx's label output and ZipMap are skipped; top-1 over its last axis); "
        "*MACs left whole* is the share of "
        "the original MACs in layers svd did not factorize. With random weights the original's "
        "logits are often nearly tied, so top-1 agreement can be low while max \\|Δ\\| is tiny: "
        "read max \\|Δ\\| first.",
        "",
        f"Run {result['generated']} at commit `{result['commit']}`, {result['seconds']} s on "
        f"{result['machine']}; {versions}.",
        *_carried_note(result),
        "",
        "## Counts",
        "",
        *_count_lines(result),
        "",
        "## Matrix",
        "",
        *table,
        "",
        "## Reasons",
        "",
        *notes.lines(),
    ]
    return "\n".join(out) + "\n"


def _carried_note(result: dict[str, Any]) -> list[str]:
    if "merged_from" not in result:
        return []
    if not any("carried" in cell for row in result["rows"] for cell in row.get("runs", {}).values()):
        parts = "; ".join(
            f"{p['generated']} at `{p['commit']}`, {p['seconds']:.0f} s" for p in result.get("parts", [])
        )
        return ["", f"This run was made in parts that together cover every cell ({parts})."]
    return [
        "",
        f"This run measured part of the matrix; a cell marked ‡ was not rerun and holds the result "
        f"of the run at commit `{result['merged_from']}`. The counts of this run below count "
        "those cells too.",
    ]


def _count_lines(result: dict[str, Any]) -> list[str]:
    lines = ["| run | commit | method | ok | refused | failed |", "|---|---|---|---|---|---|"]
    for run in result["history"]:
        for method, c in run["counts"].items():
            figures = f"{c['ok']} | {c['refused']} | {c['failed']}"
            lines.append(f"| {run['generated']} | `{run['commit']}` | {method} | {figures} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="regex on MODEL/EXPORT")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--jobs", type=int, default=1, help="artifacts run side by side")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per command")
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--into", type=Path, help="where a partial run writes (default bench/.cache/)")
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        help="update the committed results with these partial runs' cells (the rest is carried over, marked)",
    )
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    if args.render_only:
        DOCS.write_text(render(json.loads(RESULTS.read_text())))
        return 0
    if args.merge:
        DOCS.write_text(render(merge(args.merge)))
        return 0
    partial = bool(args.only) or methods != list(METHODS)
    target = (args.into or PARTIAL) if partial else RESULTS
    start = time.perf_counter()
    entries = artifacts(args.only)
    rows: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_entry, e, methods, args.timeout) for e in entries]
        for future in as_completed(futures):  # saved as each row ends: a stopped run keeps its rows
            rows.append(future.result())
            if partial:
                save(rows, target, time.perf_counter() - start, history=False)
    order = {(e["model"], e["export"]): k for k, e in enumerate(entries)}
    rows.sort(key=lambda r: order[(r["model"], r["export"])])
    result = save(rows, target, time.perf_counter() - start)
    if not partial:
        DOCS.write_text(render(result))
    for method, c in result["counts"].items():
        print(f"{method:12} ok {c['ok']:3}  refused {c['refused']:3}  failed {c['failed']:3}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
