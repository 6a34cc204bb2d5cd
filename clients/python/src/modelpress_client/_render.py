"""What the command line prints for a person: the report as a table, a sweep's curve, gates."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from modelpress_client.gates import GateResult
from modelpress_client.types import Job


def stdout() -> Console:
    # a pipe or a CI log has no width; rich would assume 80 columns and wrap ids
    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else 160)


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


def print_report(job: Job, report: dict[str, Any]) -> None:
    if report.get("kind") == "sweep":
        print_curve(job, report)
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
    stdout().print(table)


def print_curve(job: Job, report: dict[str, Any]) -> None:
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
    stdout().print(table)


def print_gates(results: list[GateResult]) -> None:
    for result in results:
        mark = "PASS" if result.passed else "FAIL"
        print(f"{mark} {result.name}: {result.message}")


def status_line(job: Job) -> str:
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
