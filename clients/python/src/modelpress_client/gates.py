"""Quality gates on a job report, and their JUnit XML for CI.

A reduction ``K`` means before / after ≥ K (``min_macs_reduction=2``: at most half the MACs).
For unstructured methods (l1, prune, variational) the parameter gate counts nonzero
parameters, as ``target_params`` does for them on the server: their tensors keep their shape.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from modelpress_client.types import SPARSE_METHODS

_EPS = 1e-9  # a ratio of exactly K passes despite float rounding


@dataclass(frozen=True)
class GateResult:
    name: str  # the command-line flag without dashes, e.g. "min-macs-reduction"
    passed: bool
    threshold: float
    actual: float | None  # None when the report did not measure it
    message: str  # one sentence with the numbers

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_gates(
    report: dict[str, Any],
    *,
    max_accuracy_drop: float | None = None,
    min_macs_reduction: float | None = None,
    min_params_reduction: float | None = None,
    max_latency_ms: float | None = None,
) -> list[GateResult]:
    """One result per gate that was asked for, in the order of the arguments."""
    before, after = report.get("before") or {}, report.get("after") or {}
    results = []
    if max_accuracy_drop is not None:
        results.append(_accuracy(before, after, max_accuracy_drop))
    if min_macs_reduction is not None:
        results.append(_reduction("min-macs-reduction", "MACs", "macs", before, after, min_macs_reduction))
    if min_params_reduction is not None:
        sparse = report.get("method") in SPARSE_METHODS
        key, what = ("nonzeros", "nonzero params") if sparse else ("params", "params")
        results.append(_reduction("min-params-reduction", what, key, before, after, min_params_reduction))
    if max_latency_ms is not None:
        results.append(_latency(before, after, max_latency_ms))
    return results


def _accuracy(before: dict[str, Any], after: dict[str, Any], limit: float) -> GateResult:
    name = "max-accuracy-drop"
    b = (before.get("accuracy") or {}).get("top1")
    a = (after.get("accuracy") or {}).get("top1")
    if b is None or a is None:
        return GateResult(
            name, False, limit, None, "top-1 accuracy was not measured (use a labelled dataset), so it fails"
        )
    drop = b - a
    ok = drop <= limit + _EPS
    verb = "allowed" if ok else "but at most"
    return GateResult(
        name, ok, limit, drop, f"top-1 accuracy dropped {drop:.4f} ({b:.4f} → {a:.4f}), {verb} {limit:g}"
    )


def _reduction(
    name: str, what: str, key: str, before: dict[str, Any], after: dict[str, Any], need: float
) -> GateResult:
    b, a = before.get(key), after.get(key)
    if b is None or a is None:
        return GateResult(name, False, need, None, f"{what} were not reported, so it fails")
    factor = math.inf if a == 0 else b / a
    ok = factor >= need * (1 - _EPS)
    verb = "required" if ok else "but required"
    return GateResult(
        name, ok, need, factor, f"{what} reduced {factor:.2f}x ({b:,} → {a:,}), {verb} ≥ {need:g}x"
    )


def _latency(before: dict[str, Any], after: dict[str, Any], limit: float) -> GateResult:
    name = "max-latency-ms"
    a = (after.get("latency_ms") or {}).get("1")
    if a is None:
        return GateResult(
            name, False, limit, None, "batch-1 latency was not measured (latency is off), so it fails"
        )
    b = (before.get("latency_ms") or {}).get("1")
    was = f" (was {b:.3f} ms)" if b is not None else ""
    ok = a <= limit
    verb = "allowed" if ok else "but at most"
    return GateResult(name, ok, limit, a, f"batch-1 latency {a:.3f} ms{was}, {verb} {limit:g} ms")


def junit_xml(
    results: list[GateResult],
    *,
    job_id: str | None,
    method: str | None,
    seconds: float,
    job_error: str | None = None,
    not_run: Sequence[str] = (),
) -> str:
    """JUnit XML: one testcase per gate, a failure for each gate that failed. When the job did
    not succeed, or the command stopped before it could tell (a rejected upload, a bad token, an
    interrupt), a ``job`` testcase carries the error, and the gates (``not_run``) are skipped."""
    failures = sum(not r.passed for r in results)
    errors = int(job_error is not None)
    tests = len(results) + errors + len(not_run)
    counts = {
        "tests": str(tests),
        "failures": str(failures),
        "errors": str(errors),
        "skipped": str(len(not_run)),
    }
    root = ET.Element("testsuites", {"name": "modelpress-client", **counts})
    suite = ET.SubElement(root, "testsuite", {"name": "modelpress.gates", **counts, "time": f"{seconds:.3f}"})
    properties = ET.SubElement(suite, "properties")
    if job_id:
        ET.SubElement(properties, "property", {"name": "job_id", "value": job_id})
    if method:
        ET.SubElement(properties, "property", {"name": "method", "value": method})
    if job_error is not None:
        case = ET.SubElement(suite, "testcase", {"classname": "modelpress.job", "name": "job", "time": "0"})
        ET.SubElement(case, "error", {"message": job_error, "type": "JobFailed"}).text = job_error
    for name in not_run:
        case = ET.SubElement(suite, "testcase", {"classname": "modelpress.gates", "name": name, "time": "0"})
        ET.SubElement(case, "skipped", {"message": "not evaluated: the job did not succeed"})
    for result in results:
        case = ET.SubElement(
            suite, "testcase", {"classname": "modelpress.gates", "name": result.name, "time": "0"}
        )
        if not result.passed:
            ET.SubElement(
                case, "failure", {"message": result.message, "type": "GateFailed"}
            ).text = result.message
        else:
            ET.SubElement(case, "system-out").text = result.message
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
