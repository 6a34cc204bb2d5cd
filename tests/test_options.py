"""What a job asks beyond method and rule: the truncation's weighting, an accuracy budget
(``max_drop``) and INT8 on top (``quantize``), through the library and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from compressors import (
    CompressOptions,
    Evaluation,
    InvalidSpec,
    Target,
    compress,
    load_dataset,
    load_model,
)
from compressors.onnx import metrics
from compressors.onnx.quantize import quantize_model
from service.spec import parse_spec
from tests import builders
from tests.conftest import run_cli

QUIET = Evaluation(latency=False)


def _ops(model: onnx.ModelProto) -> set[str]:
    return {node.op_type for node in model.graph.node}


def test_static_int8_is_qdq_and_stays_close_to_float() -> None:
    model = builders.conv(4, 16, (3, 3), (8, 8), pads=(1, 1, 1, 1))
    x = np.random.default_rng(0).standard_normal((64, 4, 8, 8)).astype(np.float32)
    quantized, facts = quantize_model(model, "static", x)
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(quantized)
    assert facts["format"] == "QDQ" and facts["per_channel"]
    exact, approx = metrics.predict(model, x), metrics.predict(quantized, x)
    assert np.linalg.norm(approx - exact) / np.linalg.norm(exact) < 0.05


def test_dynamic_int8_quantizes_gemm_but_never_convs() -> None:
    gemm, _ = quantize_model(builders.gemm(64, 32, trans_b=1), "dynamic")
    assert "MatMulInteger" in _ops(gemm) and "Gemm" not in _ops(gemm)
    conv, facts = quantize_model(builders.conv(4, 16, (3, 3), (8, 8)), "dynamic")
    assert "ConvInteger" not in _ops(conv) and "Conv" in _ops(conv)
    assert facts["convs"] == "float"
    x = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    exact = metrics.predict(builders.gemm(64, 32, trans_b=1), x)
    assert np.linalg.norm(metrics.predict(gemm, x) - exact) / np.linalg.norm(exact) < 0.05


@pytest.fixture(scope="module")
def mlp(digits_mlp_onnx: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    model = load_model(digits_mlp_onnx, tmp_path_factory.mktemp("work"))
    return model, load_dataset("digits", model.info.inputs[0])


def test_max_drop_returns_the_smallest_target_that_kept_the_budget(mlp) -> None:  # type: ignore[no-untyped-def]
    model, data = mlp
    done = compress(model, "svd", None, data, evaluation=QUIET, options=CompressOptions(max_drop=0.02))
    search = done.report.search
    assert search is not None and search["metric"] == "macs"
    kept = [t for t in search["trace"] if t.get("within")]
    broke = [t for t in search["trace"] if t.get("reachable") and not t["within"]]
    assert kept and broke, "the search must bracket the budget"
    assert all(search["baseline"] - t["score"] <= 0.02 + 1e-12 for t in kept)
    assert search["chosen_target"] == pytest.approx(min(t["target"] for t in kept))
    assert done.report.rank == {"target_macs": pytest.approx(search["chosen_target"])}
    assert done.report.after.macs / done.report.before.macs < 0.5
    assert "report_drop" in search and done.report.dataset["evaluated_samples"] == len(data.x_val)


def test_options_are_refused_where_they_cannot_apply(mlp) -> None:  # type: ignore[no-untyped-def]
    model, data = mlp
    with pytest.raises(InvalidSpec, match="not both"):
        compress(model, "svd", Target(0.25, "macs"), data, options=CompressOptions(max_drop=0.01))
    with pytest.raises(InvalidSpec, match="weigh"):
        compress(model, "prune", None, data, options=CompressOptions(weighting="activations"))
    with pytest.raises(InvalidSpec, match="calibrates on data"):
        compress(model, "svd", None, None, options=CompressOptions(quantize="static"))
    with pytest.raises(ValueError, match="exactly one"):
        parse_spec({"method": "svd", "rank": {"max_drop": 0.01, "target_macs": 0.25}})
    with pytest.raises(ValueError, match="weigh"):
        parse_spec({"method": "l1", "rank": {"target_params": 0.25, "weighting": "activations"}})
    spec = parse_spec(
        {"method": "svd", "rank": {"max_drop": 0.01, "weighting": "none"}, "quantize": "static"}
    )
    assert spec.options() == CompressOptions("none", 0.01, "static")


def test_weighting_defaults_to_activations_with_data_and_is_reported(mlp) -> None:  # type: ignore[no-untyped-def]
    model, data = mlp
    rule = Target(0.1, "macs")
    weighted = compress(model, "svd", rule, data, evaluation=QUIET)
    plain = compress(model, "svd", rule, data, evaluation=QUIET, options=CompressOptions(weighting="none"))
    assert (weighted.report.weighting, plain.report.weighting) == ("activations", "none")
    assert compress(model, "svd", rule, evaluation=QUIET).report.weighting == "none"
    assert weighted.report.after.fidelity is not None and plain.report.after.fidelity is not None
    # at a tenth of the MACs, fitting the layers' outputs keeps the original's answers better
    agree = weighted.report.after.fidelity["top1_agreement"]
    assert agree >= plain.report.after.fidelity["top1_agreement"]


def test_cli_budget_weighting_and_static_int8_report_each_stage(
    digits_mlp_onnx: Path, tmp_path: Path
) -> None:
    out, report_path = tmp_path / "small.onnx", tmp_path / "report.json"
    done = run_cli(
        "compress", str(digits_mlp_onnx), "--method", "svd", "--max-drop", "0.02", "--weighting",
        "activations", "--quantize", "static", "--data", "digits", "-o", str(out), "--report",
        str(report_path), "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(report_path.read_text())
    assert report["weighting"] == "activations" and report["quantize"]["mode"] == "static"
    assert report["after"]["file_bytes"] < report["compressed"]["file_bytes"], "INT8 shrinks the file"
    assert report["after"]["accuracy"]["top1"] >= report["before"]["accuracy"]["top1"] - 0.05
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(onnx.load(out))
    assert report["search"]["chosen_target"] < 0.5
