"""``modelpress inspect`` and ``modelpress compress`` on models exported by torch.onnx (dynamo)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from compressors.intake.datasets import load_dataset
from compressors.onnx import metrics
from compressors.onnx.inspection import TensorSpec
from tests.conftest import run_cli


def test_inspect_lists_layers_of_a_zip_bundle(digits_cnn_zip: Path) -> None:
    done = run_cli("inspect", str(digits_cnn_zip), "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["opset"] >= 18
    assert info["external_files"], "the dynamo export keeps weights in external data"
    assert {layer["op"] for layer in info["layers"]} >= {"Conv", "Gemm"}
    assert all(layer["eligible"] for layer in info["layers"])
    assert info["inputs"][0]["shape"][1:] == [1, 8, 8]


def test_target_macs_quarter_on_a_bundled_cnn(digits_cnn_zip: Path, tmp_path: Path) -> None:
    out, report_path = tmp_path / "small.onnx", tmp_path / "report.json"
    done = run_cli(
        "compress",
        str(digits_cnn_zip),
        "--method",
        "svd",
        "--target-macs",
        "0.25",
        "--data",
        "digits",
        "-o",
        str(out),
        "--report",
        str(report_path),
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(report_path.read_text())
    assert abs(report["ratios"]["macs"] - 0.25) <= 0.02
    assert report["after"]["macs"] < report["before"]["macs"]
    assert report["before"]["accuracy"]["top1"] > 0.8  # the trained model, measured here
    assert report["latency"]["threads"] == 1 and report["before"]["latency_ms"]["32"] > 0
    # the artifact is a plain .onnx that onnxruntime runs on the whole dataset
    model = onnx.load(str(out))
    data = load_dataset("digits", TensorSpec("x", "float", ["batch", 1, 8, 8]))
    x, y = data.all_inputs()
    logits = metrics.predict(model, x)
    assert logits.shape == (len(x), 10)
    assert metrics.accuracy(logits, y)["top1"] == pytest.approx(report["after"]["accuracy"]["top1"])
    assert "accuracy top1" in done.stdout  # the table a person reads


def _compress_json(model: Path, out: Path, *flags: str) -> dict:
    """The report of ``modelpress compress MODEL FLAGS -o OUT --json --no-latency``."""
    done = run_cli("compress", str(model), *flags, "-o", str(out), "--json", "--no-latency")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_energy_on_an_external_data_mlp_keeps_accuracy(digits_mlp_onnx: Path, tmp_path: Path) -> None:
    report = _compress_json(digits_mlp_onnx, tmp_path / "mlp.onnx", "--energy", "0.9", "--data", "digits")
    assert report["after"]["params"] < report["before"]["params"]
    # energy 0.9 in every layer, the 10-way head included, costs a few points (0.89 agreement at
    # the fixture's seed; weight energy is blind to which directions the data uses)
    assert report["after"]["fidelity"]["top1_agreement"] > 0.85
    assert report["after"]["accuracy"]["top1"] > report["before"]["accuracy"]["top1"] - 0.1
    # both layers, the hidden one whose weight lives in the external-data file included, are
    # factorized at a rank that keeps the energy asked for
    assert len(report["layers"]) == 2
    for layer in report["layers"]:
        assert layer["rank"] is not None and layer["energy_kept"] >= 0.9, layer
        assert layer["params_after"] < layer["params_before"]
    assert report["schema_version"] == "1.0"
    assert {"onnx", "onnxruntime", "numpy"} <= set(report["versions"])


def test_transformer_style_matmuls_are_factorized(encoder_onnx: Path, tmp_path: Path) -> None:
    inspect = json.loads(run_cli("inspect", str(encoder_onnx), "--json").stdout)
    ops = {layer["op"] for layer in inspect["layers"] if layer["eligible"]}
    assert "MatMul" in ops or "Gemm" in ops
    x = np.random.default_rng(0).standard_normal((40, 6, 32)).astype(np.float32)
    data = tmp_path / "tokens.npz"
    np.savez(data, x=x)
    out = tmp_path / "enc.onnx"
    report = _compress_json(encoder_onnx, out, "--target-params", "0.5", "--data", str(data))
    factorized = {layer["name"] for layer in report["layers"] if layer["rank"]}
    matmuls = {layer["name"] for layer in report["layers"] if layer["op"] == "MatMul"}
    assert len(matmuls) >= 3 and matmuls <= factorized  # attention and feed-forward, not just the head
    assert abs(report["after"]["params"] / report["before"]["params"] - 0.5) <= 0.02
    assert report["after"]["fidelity"] is not None and report["after"]["accuracy"] is None
    assert metrics.predict(onnx.load(str(out)), x).shape[0] == 40


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--energy", "0.9", "--target-macs", "0.5"], "not allowed with"),
        (["--target-macs", "1.5"], "target_macs"),
        (["--bogus"], "unrecognized"),
    ],
)
def test_usage_errors_exit_3(digits_mlp_onnx: Path, tmp_path: Path, args: list[str], needle: str) -> None:
    done = run_cli("compress", str(digits_mlp_onnx), *args, "-o", str(tmp_path / "o.onnx"))
    assert done.returncode == 3
    assert needle in done.stderr
    assert "Traceback" not in done.stderr


def test_wrong_shaped_dataset_is_rejected_with_exit_2(digits_cnn_zip: Path, tmp_path: Path) -> None:
    data = tmp_path / "flat.npz"
    np.savez(data, x=np.zeros((10, 64), np.float32), y=np.zeros(10, np.int64))
    done = run_cli("compress", str(digits_cnn_zip), "--data", str(data), "-o", str(tmp_path / "o.onnx"))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "(N, 1, 8, 8)" in done.stderr


def test_unreachable_target_is_one_line_exit_2(digits_mlp_onnx: Path, tmp_path: Path) -> None:
    done = run_cli(
        "compress", str(digits_mlp_onnx), "--target-params", "0.0001", "-o", str(tmp_path / "o.onnx")
    )
    assert done.returncode == 2
    assert "invalid-spec" in done.stderr and done.stderr.strip().count("\n") == 0


def test_sweep_writes_curves_for_factorizing_structured_and_unstructured_methods(
    digits_mlp_onnx: Path, tmp_path: Path
) -> None:
    out = tmp_path / "curve"
    done = run_cli(
        "sweep",
        str(digits_mlp_onnx),
        "--data",
        "digits",
        "--methods",
        "svd,l2,nuclear,l1,group_lasso",
        "--targets",
        "0.5,0.25",
        *("--strengths", "l2=1", "--strengths", "nuclear=1,3", "--strengths", "l1=0.5"),
        *("--strengths", "group_lasso=1", "--strength-ramp", "0.5", "--epochs", "1"),
        "-o",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    curve = json.loads((out / "curve.json").read_text())
    points = curve["points"]
    counts = {m: sum(p["method"] == m for p in points) for m in ("svd", "l2", "nuclear", "l1", "group_lasso")}
    assert counts == {"svd": 2, "l2": 2, "nuclear": 4, "l1": 2, "group_lasso": 2}  # strengths × targets
    assert curve["baseline_accuracy"] > 0.8
    for p in points:
        if p["method"] == "l1":  # unstructured: nonzeros shrink, MACs do not
            assert p["macs_ratio"] == 1.0 and abs(p["params_ratio"] - p["target"]) <= 0.02
        else:
            assert p["macs_ratio"] <= p["target"] + 0.03
    nuclear = {
        p["strength"]: p["accuracy"] for p in points if p["method"] == "nuclear" and p["target"] == 0.5
    }
    assert set(nuclear) == {1.0, 3.0}  # one training per strength, truncated at every target
    front = {json.dumps(p, sort_keys=True) for p in curve["pareto_macs"]}
    assert front and front <= {json.dumps(p, sort_keys=True) for p in points}
    rows = (out / "curve.csv").read_text().strip().splitlines()
    assert len(rows) == len(points) + 1
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


KEPT = {
    "svd": "rank ",
    "nuclear": "rank ",
    "l2": "rank ",
    "group_lasso": "channels ",
    "l1": "nonzeros ",
    "variational": "nonzeros ",
    "prune": "nonzeros ",
}


@pytest.mark.parametrize("method", sorted(KEPT))
def test_every_method_prints_a_readable_table(method: str, digits_mlp_onnx: Path, tmp_path: Path) -> None:
    """The human-readable output of ``compress``: the summary and one row per layer, whatever
    the method leaves empty (energy kept is None for channel removal and sparsity)."""
    target = (
        ["--target-params", "0.5"] if method in ("l1", "variational", "prune") else ["--target-macs", "0.5"]
    )
    done = run_cli(
        "compress",
        str(digits_mlp_onnx),
        "--method",
        method,
        *target,
        "--data",
        "digits",
        "--epochs",
        "1",
        "--no-latency",
        "-o",
        str(tmp_path / "small.onnx"),
    )
    assert done.returncode == 0, done.stderr
    assert f"modelpress {method}" in done.stdout
    for figure in ("parameters", "MACs / sample", "accuracy top1"):
        assert figure in done.stdout, figure
    rows = [line for line in done.stdout.splitlines() if "Gemm" in line or "MatMul" in line]
    assert len(rows) == 2, done.stdout  # both layers of the MLP
    # what each layer kept, in the method's terms (a layer the rule leaves whole says so)
    assert KEPT[method] in rows[0], rows
    assert all(
        any(kind in row for kind in (KEPT[method], "dense", "inputs removed upstream")) for row in rows
    )
    assert "None" not in done.stdout
