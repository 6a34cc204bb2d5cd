"""What the pages show, built from the API's own job records and the jobs' own report.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from service.schemas import JobRecord
from service.store import ArtifactStore
from service.ui import format as fmt

RULE_WORDS = {"energy": "energy ≥ {}", "target_macs": "MACs → {}", "target_params": "params → {}"}


def read_report(store: ArtifactStore, tenant_id: str, job: JobRecord) -> dict[str, Any] | None:
    """The job's report.json, once it has one."""
    if "report.json" not in job.artifacts:
        return None
    try:
        return json.loads((store.folder(tenant_id, "jobs", job.id) / "report.json").read_text())
    except (OSError, ValueError):
        return None


def rule_text(job: JobRecord) -> str:
    spec: Any = job.spec
    if job.kind == "sweep":
        targets = spec.targets
        return f"{len(targets)} targets" if targets else "default targets"
    if spec.rank is None:
        return "method's own"
    return ", ".join(RULE_WORDS.get(k, k + " {}").format(v) for k, v in spec.rank.as_dict().items())


def accuracy_drop(report: dict[str, Any]) -> tuple[float | None, str]:
    """Top-1 before − after, or the share of top-1 answers that changed when there are no labels."""
    before, after = report.get("before") or {}, report.get("after") or {}
    if before.get("accuracy") and after.get("accuracy"):
        return before["accuracy"]["top1"] - after["accuracy"]["top1"], "top-1"
    agreement = (after.get("fidelity") or {}).get("top1_agreement")
    return (None, "") if agreement is None else (1 - agreement, "disagreement")


@dataclass
class JobRow:
    job: JobRecord
    methods: str
    target: str
    params_ratio: float | None = None
    macs_ratio: float | None = None
    drop: float | None = None
    drop_kind: str = ""


def job_row(job: JobRecord, report: dict[str, Any] | None) -> JobRow:
    spec: Any = job.spec
    row = JobRow(job, ", ".join(spec.methods) if job.kind == "sweep" else spec.method, rule_text(job))
    if report is not None and job.kind == "job":
        ratios = report.get("ratios") or {}
        row.params_ratio, row.macs_ratio = ratios.get("nonzeros", ratios.get("params")), ratios.get("macs")
        row.drop, row.drop_kind = accuracy_drop(report)
    return row


@dataclass
class Line:
    label: str
    before: str
    after: str
    change: str = ""


def _ratio_line(
    label: str, before: Any, after: Any, show: Any, less: str = "smaller", more: str = "larger"
) -> Line:
    ratio = after / before if isinstance(before, int | float) and before and after is not None else None
    return Line(label, show(before), show(after), fmt.change(ratio, less, more))


def measurement_lines(report: dict[str, Any]) -> list[Line]:
    """The before/after table: sizes, latency per batch, accuracy or fidelity."""
    before, after = report["before"], report["after"]
    lines = [
        _ratio_line("Parameters", before["params"], after["params"], fmt.count),
        _ratio_line("Nonzero parameters", before["nonzeros"], after["nonzeros"], fmt.count),
        _ratio_line("MACs per sample", before["macs"], after["macs"], fmt.count),
        _ratio_line("File size", before["file_bytes"], after["file_bytes"], fmt.size),
    ]
    for batch, ms in (before.get("latency_ms") or {}).items():
        later = (after.get("latency_ms") or {}).get(batch)
        lines.append(_ratio_line(f"Latency, batch {batch}", ms, later, fmt.ms, "faster", "slower"))
    for key, name in (("top1", "Top-1 accuracy"), ("top5", "Top-5 accuracy")):
        was, now = (before.get("accuracy") or {}).get(key), (after.get("accuracy") or {}).get(key)
        if was is not None or now is not None:
            drop = was - now if was is not None and now is not None else None
            lines.append(Line(name, fmt.percent(was), fmt.percent(now), f"{fmt.points(drop)} drop"))
    for key, value in (after.get("fidelity") or {}).items():
        show = fmt.percent if "agreement" in key else fmt.number
        lines.append(Line(f"Fidelity: {key.replace('_', ' ')}", "", show(value)))
    return lines


def layer_lines(report: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for layer in report.get("layers") or []:
        channels = layer.get("channels")
        rows.append(
            {
                "name": layer["name"],
                "op": layer["op"],
                "shape": "×".join(str(d) for d in layer.get("shape") or []),
                "rank": "dense" if layer.get("rank") is None else f"{layer['rank']} / {layer['full_rank']}",
                "energy": fmt.percent(layer.get("energy_kept")),
                "channels": f"{channels[0]} / {channels[1]}" if channels else "—",
                "params": f"{fmt.count(layer['params_before'])} → {fmt.count(layer['params_after'])}",
                "nonzeros": fmt.count(layer.get("nonzeros_after")),
                "macs": f"{fmt.count(layer['macs_before'])} → {fmt.count(layer['macs_after'])}",
            }
        )
    return rows


def sweep_curve(report: dict[str, Any]) -> dict[str, Any]:
    """The sweep's own curve (as curve.json holds it) for the chart and the points table."""
    keys = ("baseline_accuracy", "metric", "points", "pareto_params", "pareto_macs")
    return {key: report.get(key) for key in keys}


COMPARE_LINES = (
    ("Params after / before", "params", fmt.ratio),
    ("Nonzeros after / before", "nonzeros", fmt.ratio),
    ("MACs after / before", "macs", fmt.ratio),
    ("File size after / before", "file_bytes", fmt.ratio),
    ("Latency b1 after / before", "latency_b1", fmt.ratio),
)


def compare_table(rows: list[tuple[JobRecord, dict[str, Any] | None]]) -> list[tuple[str, list[str]]]:
    """One line per measure, one column per job: what a person compares settings by."""
    table: list[tuple[str, list[str]]] = [
        ("Method", [job_row(job, report).methods for job, report in rows]),
        ("Rank rule", [rule_text(job) for job, _ in rows]),
        ("Status", [job.status for job, _ in rows]),
    ]
    for label, key, show in COMPARE_LINES:
        table.append((label, [show(((r or {}).get("ratios") or {}).get(key)) for _, r in rows]))
    table.append(("Accuracy before", [_top1(r, "before") for _, r in rows]))
    table.append(("Accuracy after", [_top1(r, "after") for _, r in rows]))
    drops = [accuracy_drop(r) if r else (None, "") for _, r in rows]
    table.append(("Drop (top-1 or disagreement)", [fmt.points(d) for d, _ in drops]))
    table.append(("Duration", [fmt.seconds(duration(job)) for job, _ in rows]))
    return table


def _top1(report: dict[str, Any] | None, side: str) -> str:
    return fmt.percent((((report or {}).get(side) or {}).get("accuracy") or {}).get("top1"))


def duration(job: JobRecord) -> float | None:
    if job.started_at is None or job.finished_at is None:
        return None
    return (job.finished_at - job.started_at).total_seconds()
