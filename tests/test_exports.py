"""Retraining the kinds of model people export, built here from plain torch and onnx so the
suite needs no timm/transformers/skl2onnx: token ids with an attention mask, a classifier with
a label output before its scores (as skl2onnx writes one, with and without ZipMap), and a
language model whose head is tied to its token embedding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from compressors.onnx.macs import count_params
from tests.conftest import run_cli
from tests.exports import HIDDEN, VOCAB, TiedLM, TokenClassifier, export, label_first_classifier, tokens


def _compress(model: Path, data: str, out: Path, *flags: str) -> tuple[int, dict | None, str]:
    report = out.with_suffix(".json")
    done = run_cli(
        "compress", str(model), *flags, "--data", data, "-o", str(out), "--report", str(report),
        "--no-latency",
    )  # fmt: skip
    loaded = json.loads(report.read_text()) if done.returncode == 0 else None
    return done.returncode, loaded, done.stderr + done.stdout


@pytest.fixture(scope="module")
def token_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    ids, mask = tokens(2)
    folder = tmp_path_factory.mktemp("tokens")
    return export(
        TokenClassifier(), (torch.from_numpy(ids), torch.from_numpy(mask)), ["input_ids", "attention_mask"],
        folder / "tokens.onnx",
    )  # fmt: skip


def test_token_ids_and_a_mask_retrain_by_input_name(token_model: Path, tmp_path: Path) -> None:
    ids, mask = tokens(256)
    labels = (ids[:, 0] % 4).astype(np.int64)  # learnable from the first token
    data = tmp_path / "tokens.npz"
    np.savez(data, input_ids=ids, attention_mask=mask, y=labels)
    code, report, log = _compress(
        token_model,
        str(data),
        tmp_path / "out.onnx",
        "--method",
        "nuclear",
        "--target-macs",
        "0.5",
        "--epochs",
        "1",
    )
    assert code == 0, log
    assert report is not None
    assert len(report["training"]["stages"]["train"]["history"]) == 1
    assert report["after"]["macs"] < report["before"]["macs"]
    assert report["dataset"]["evaluated_samples"] == round(256 * 0.2)
    artifact = onnx.load(str(tmp_path / "out.onnx"))
    assert [i.name for i in artifact.graph.input] == ["input_ids", "attention_mask"]
    session = ort.InferenceSession(artifact.SerializeToString())
    assert session.run(None, {"input_ids": ids[:3], "attention_mask": mask[:3]})[0].shape == (3, 4)


def test_a_dataset_missing_an_input_is_refused_by_name(token_model: Path, tmp_path: Path) -> None:
    ids, _ = tokens(32)
    data = tmp_path / "ids-only.npz"
    np.savez(data, input_ids=ids, y=np.zeros(32, np.int64))
    code, _, log = _compress(
        token_model, str(data), tmp_path / "out.onnx", "--method", "svd", "--energy", "0.9"
    )
    assert code == 2
    assert "dataset-rejected" in log and "'attention_mask'" in log, log
    code, _, log = _compress(
        token_model, "digits", tmp_path / "out.onnx", "--method", "svd", "--energy", "0.9"
    )
    assert code == 2 and "2 inputs" in log, log


@pytest.mark.parametrize("zipmap", [False, True], ids=["probabilities", "zipmap"])
def test_a_label_output_before_the_scores_is_skipped(zipmap: bool, tmp_path: Path) -> None:
    path = tmp_path / "clf.onnx"
    onnx.save(label_first_classifier(zipmap), str(path))
    done = run_cli("inspect", str(path), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["retrainable"] is True
    code, svd, log = _compress(path, "digits", tmp_path / "svd.onnx", "--method", "svd", "--energy", "0.95")
    assert code == 0, log
    assert svd is not None and svd["before"]["accuracy"]["top1"] > 0.6
    code, report, log = _compress(
        path, "digits", tmp_path / "out.onnx", "--method", "nuclear", "--target-macs", "0.5", "--epochs", "1"
    )
    assert code == 0, log
    assert report is not None and report["after"]["accuracy"]["top1"] > 0.5
    artifact = onnx.load(str(tmp_path / "out.onnx"))
    assert [o.name for o in artifact.graph.output] == ["label", "output_probability"]  # every output kept
    code, _, log = _compress(
        path, "digits", tmp_path / "bad.onnx", "--method", "nuclear", "--epochs", "1", "--scores", "label"
    )
    assert code == 2 and "'label' is not a floating-point tensor" in log, log


@pytest.fixture(scope="module")
def tied_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    ids, _ = tokens(2)
    return export(
        TiedLM(), (torch.from_numpy(ids),), ["input_ids"], tmp_path_factory.mktemp("lm") / "lm.onnx"
    )


def _per_layer_totals_agree(report: dict, artifact: onnx.ModelProto) -> None:
    assert report["after"]["params"] == count_params(artifact)[0]  # from the written graph
    change = sum(row["params_before"] - row["params_after"] for row in report["layers"])
    assert report["before"]["params"] - report["after"]["params"] == change


def test_a_tied_embedding_and_head_is_left_whole_and_the_totals_agree(tied_lm: Path, tmp_path: Path) -> None:
    ids, _ = tokens(64)
    data = tmp_path / "lm.npz"
    np.savez(data, input_ids=ids)
    out = tmp_path / "svd.onnx"
    code, report, log = _compress(tied_lm, str(data), out, "--method", "svd", "--target-params", "0.9")
    assert report is not None or code == 2, log
    if report is None:  # the tied matrix is most of the model: the target may be out of reach
        assert "invalid-spec" in log, log
        code, report, log = _compress(tied_lm, str(data), out, "--method", "svd", "--energy", "0.5")
        assert code == 0 and report is not None, log
    head = [row for row in report["layers"] if row["shape"] in ([HIDDEN, VOCAB], [VOCAB, HIDDEN])]
    assert head and all(row["rank"] is None and row["params_after"] == row["params_before"] for row in head)
    _per_layer_totals_agree(report, onnx.load(str(out)))


@pytest.mark.parametrize("labels", [False, True], ids=["distilled", "next-token"])
def test_a_language_model_retrains_per_position_with_its_tie_kept(
    labels: bool, tied_lm: Path, tmp_path: Path
) -> None:
    ids, _ = tokens(128)
    data = tmp_path / "lm.npz"
    arrays = {"input_ids": ids}
    if labels:
        arrays["y"] = np.roll(ids, -1, axis=1)  # the next token at each position
    np.savez(data, **arrays)
    out = tmp_path / "out.onnx"
    code, report, log = _compress(
        tied_lm, str(data), out, "--method", "nuclear", "--energy", "0.9", "--epochs", "1"
    )
    assert code == 0, log
    assert report is not None
    key = "accuracy" if labels else "fidelity"
    assert report["after"][key], report["after"]
    original, artifact = onnx.load(str(tied_lm)), onnx.load(str(out))
    embedding = next(t for t in original.graph.initializer if list(t.dims) == [VOCAB, HIDDEN])
    trained = {t.name: numpy_helper.to_array(t) for t in artifact.graph.initializer}
    assert embedding.name in trained  # still one matrix for the embedding and the head
    assert not np.array_equal(trained[embedding.name], numpy_helper.to_array(embedding))  # and it trained
    assert sum(1 for t in artifact.graph.initializer if list(t.dims) == [VOCAB, HIDDEN]) == 1
    _per_layer_totals_agree(report, artifact)
