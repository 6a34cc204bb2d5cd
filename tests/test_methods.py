"""Every method runs from ``modelpress compress`` on a dynamo-exported zip bundle (external
data included), with labels and without (distillation, fidelity in the report)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from compressors.onnx import metrics
from service.cli import main
from service.spec import METHODS

RANKS = {
    "svd": ["--target-macs", "0.5"],
    "nuclear": ["--target-macs", "0.5"],
    "l2": ["--target-macs", "0.5"],
    "group_lasso": ["--target-params", "0.8"],
    "l1": ["--target-params", "0.3"],
    "prune": ["--target-params", "0.3"],
    "variational": [],
}


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sklearn.datasets import load_digits

    x = (load_digits().data[:400] / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    path = tmp_path_factory.mktemp("data") / "unlabelled.npz"
    np.savez(path, x=x)
    return path


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("labelled", [True, False])
def test_every_method_on_a_bundled_dynamo_export(
    method: str,
    labelled: bool,
    digits_cnn_zip: Path,
    unlabelled: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out.onnx"
    data = "digits" if labelled else str(unlabelled)
    code = main(
        [
            "compress",
            str(digits_cnn_zip),
            "--method",
            method,
            *RANKS[method],
            "--data",
            data,
            "--epochs",
            "1",
            "--finetune-epochs",
            "1",
            "--no-latency",
            "--json",
            "-o",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert report["method"] == method
    before, after = report["before"], report["after"]
    if method in ("l1", "prune", "variational"):
        assert after["nonzeros"] < before["nonzeros"]
        assert after["macs"] == before["macs"]  # sparsity is never reported as MACs saved
    else:
        assert after["macs"] < before["macs"] and after["params"] < before["params"]
    assert (after["accuracy"] is not None) == labelled
    if labelled:  # trained on 80% of digits: scored on the held-out 20% only
        assert report["dataset"]["evaluated_samples"] == 359
    # one epoch of training and one of fine-tuning at these targets keeps the model's decisions
    # (0.98-1.0 agreement measured): a method that breaks the model fails here
    assert after["fidelity"]["top1_agreement"] > 0.9
    if labelled:
        assert after["accuracy"]["top1"] >= before["accuracy"]["top1"] - 0.05
    if method != "svd" or labelled:
        assert report["training"]["stages"]["finetune"]["steps"] > 0
    model = onnx.load(str(out))
    logits = metrics.predict(model, np.zeros((3, 1, 8, 8), np.float32))
    assert logits.shape == (3, 10)
