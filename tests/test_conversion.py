"""ONNX → torch for retraining on graphs as exporters write them: newer operator versions, a
batch fixed at export, the TorchScript exporter's shared weights; and write-back."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from compressors.onnx.graph import fixed_batch
from compressors.training.any_batch import sample_feeds
from compressors.training.convert import to_torch, write_back
from compressors.training.prepare import check_retrainable, prepare
from examples import digits
from tests.conftest import run_cli

# --- operator versions onnx2torch 1.5 lacks -------------------------------------------------


def _single_node(
    op: str, opset: int, consts: list[tuple[str, np.ndarray | None]], outputs: int = 1, **attrs
) -> onnx.ModelProto:
    """``op(x, *consts)``; a constant given as None is an optional input left empty."""
    names = ["x", *[name if value is not None else "" for name, value in consts]]
    node = helper.make_node(op, names, [f"y{i}" for i in range(outputs)], name=f"the_{op}", **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", *X.shape[1:]])],
        [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None) for i in range(outputs)],
        [numpy_helper.from_array(v, k) for k, v in consts if v is not None],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


X = np.random.default_rng(0).standard_normal((2, 3, 5, 4)).astype(np.float32)


def _ints(*values: int) -> np.ndarray:
    return np.array(values, np.int64)


CASES = {
    "Gelu-20": ("Gelu", 20, [], {}),
    "Gelu-20-tanh": ("Gelu", 20, [], {"approximate": "tanh"}),
    "ReduceMean-18-axes-input": ("ReduceMean", 18, [("axes", _ints(1, -1))], {"keepdims": 1}),
    "ReduceMax-20-no-keepdims": ("ReduceMax", 20, [("axes", _ints(2))], {"keepdims": 0}),
    "ReduceSum-18-all-axes": ("ReduceSum", 18, [], {"keepdims": 0}),
    "ReduceL2-18": ("ReduceL2", 18, [("axes", _ints(3))], {}),
    "Split-18-uneven-num_outputs": ("Split", 18, [], {"axis": 2, "num_outputs": 2}),
    "Split-18-sizes": ("Split", 18, [("split", _ints(1, 4))], {"axis": 2}),
    "Pad-18-axes": ("Pad", 18, [("pads", _ints(1, 2, 0, 1)), ("value", None), ("axes", _ints(1, 3))], {}),
    "Pad-19-reflect": ("Pad", 19, [("pads", _ints(0, 0, 1, 1, 0, 0, 1, 1))], {"mode": "reflect"}),
    "Resize-19-linear": (
        "Resize",
        19,
        [("roi", None), ("scales", np.array([1, 1, 2, 2], np.float32))],
        {"mode": "linear"},
    ),
    "Softmax-13-axis-1": ("Softmax", 13, [], {"axis": 1}),
    "LogSoftmax-13-axis-0": ("LogSoftmax", 13, [], {"axis": 0}),
    "Erf-13": ("Erf", 13, [], {}),
    "LayerNormalization-17-axis-2": (
        "LayerNormalization",
        17,
        [("scale", np.full((5, 4), 0.5, np.float32))],
        {"axis": 2},
    ),
    "Flatten-13-axis-rank": ("Flatten", 13, [], {"axis": 4}),
    "Trilu-14-lower": ("Trilu", 14, [("k", np.array(1, np.int64))], {"upper": 0}),
    "Reshape-21": ("Reshape", 21, [("shape", _ints(2, -1))], {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_newer_operator_versions_convert_and_compute_what_onnxruntime_does(case: str) -> None:
    op, opset, consts, attrs = CASES[case]
    model = _single_node(op, opset, consts, 2 if op == "Split" else 1, **attrs)
    assert check_retrainable(model) == (True, "")
    assert prepare(model).opset_import[0].version == opset  # converted at its own version
    expected = ort.InferenceSession(model.SerializeToString()).run(None, {"x": X})
    with torch.no_grad():
        got = to_torch(model).module(torch.from_numpy(X))
    got = got if isinstance(got, tuple | list) else (got,)
    for want, have in zip(expected, got, strict=True):
        np.testing.assert_allclose(have.numpy(), want, rtol=1e-5, atol=1e-5)


def test_an_unconvertible_operator_is_named_with_its_node() -> None:
    model = _single_node("Det", 20, [])
    ok, why = check_retrainable(model)
    assert not ok and "Det" in why and "the_Det" in why


# --- models exported the way users export them -----------------------------------------------


class GeluEncoder(torch.nn.Module):
    """Self-attention written out (MatMul, Softmax), GELU and LayerNorm: opset 20 with Gelu."""

    def __init__(self, hidden: int = 16, classes: int = 4) -> None:
        super().__init__()
        self.qkv = torch.nn.Linear(hidden, 3 * hidden)
        self.ff = torch.nn.Sequential(
            torch.nn.Linear(hidden, 32), torch.nn.GELU(), torch.nn.Linear(32, hidden)
        )
        self.norm = torch.nn.LayerNorm(hidden)
        self.head = torch.nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        attention = torch.softmax(q @ k.transpose(1, 2) / 4.0, dim=-1)
        h = self.norm(x + attention @ v)
        return self.head((h + self.ff(h)).mean(dim=1))


class TokenClassCNN(torch.nn.Module):
    """A CNN with a class-token-like constant concatenated to its features (as a ViT does)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.token = torch.nn.Parameter(torch.randn(1, 1, 8))
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.conv(x).flatten(2).transpose(1, 2)  # (batch, 64, 8)
        tokens = torch.cat([self.token.expand(x.shape[0], -1, -1), tokens], dim=1)
        return self.head(tokens[:, 0] + tokens[:, 1:].mean(dim=1))


class BiasFreeCNN(torch.nn.Module):
    """Convolutions without bias, each followed by BatchNorm, then Flatten (as ResNets are)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        for fan_in in (1, width):
            layers += [
                torch.nn.Conv2d(fan_in, width, 3, padding=1, bias=False),
                torch.nn.BatchNorm2d(width),
                torch.nn.ReLU(),
            ]
        self.features = torch.nn.Sequential(*layers)
        self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(width * 64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _torchscript_export(model: torch.nn.Module, example: torch.Tensor, path: Path) -> Path:
    model.eval()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["x"])
    return path


@pytest.fixture(scope="module")
def trained_cnn() -> digits.DigitsCNN:
    torch.manual_seed(0)  # the initial weights too: the trained model is the same every run
    model = digits.DigitsCNN(width=8)
    digits.train_digits(model, image=True, epochs=4)
    return model


@pytest.fixture(scope="module")
def fixed_cnn(trained_cnn: digits.DigitsCNN, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Batch fixed at 1, BatchNorm kept as nodes (unoptimized), Flatten written as Reshape [1, 256]."""
    folder = tmp_path_factory.mktemp("fixed")
    return digits.export(
        trained_cnn, torch.zeros(1, 1, 8, 8), folder / "cnn.onnx", dynamic_batch=False, optimize=False
    )


@pytest.fixture(scope="module")
def dynamic_cnn(trained_cnn: digits.DigitsCNN, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dynamic")
    return digits.export(trained_cnn, torch.zeros(2, 1, 8, 8), folder / "cnn.onnx", optimize=False)


@pytest.fixture(scope="module")
def torchscript_cnn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The TorchScript exporter folds BatchNorm into the convs; the folded biases of a freshly
    initialised net are all zero, so it shares one tensor among them through Identity nodes."""
    torch.manual_seed(0)
    model = BiasFreeCNN()
    return _torchscript_export(model, torch.zeros(1, 1, 8, 8), tmp_path_factory.mktemp("ts") / "cnn.onnx")


@pytest.fixture(scope="module")
def gelu_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("gelu")
    return digits.export(GeluEncoder(), torch.randn(1, 6, 16), folder / "encoder.onnx", dynamic_batch=False)


def _agrees_at_any_batch(model: onnx.ModelProto, rows: int = 7) -> torch.nn.Module:
    """to_torch's module on ``rows`` rows at once equals onnxruntime on the user's graph row by row."""
    trainable = to_torch(model)
    feeds = sample_feeds(model, rows, seed=3)
    session = ort.InferenceSession(model.SerializeToString())
    batch = fixed_batch(model) or rows
    want = np.concatenate(
        [session.run(None, {k: v[i : i + batch] for k, v in feeds.items()})[0] for i in range(0, rows, batch)]
    )
    with torch.no_grad():
        got = trainable.module.eval()(*[torch.from_numpy(v) for v in feeds.values()])
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)
    return trainable.module


def test_a_fixed_batch_cnn_with_batchnorm_converts_batch_free(fixed_cnn: Path) -> None:
    model = onnx.load(str(fixed_cnn))
    assert fixed_batch(model) == 1
    assert {"BatchNormalization", "Reshape"} <= {n.op_type for n in model.graph.node}
    assert to_torch(model).chunk is None  # the batch was freed, not worked around
    _agrees_at_any_batch(model)


def test_a_class_token_concatenated_at_a_fixed_batch_is_expanded_to_the_batch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = digits.export(TokenClassCNN(), torch.zeros(1, 1, 8, 8), tmp_path / "t.onnx", dynamic_batch=False)
    model = onnx.load(str(path))
    assert to_torch(model).chunk is None
    _agrees_at_any_batch(model)


def test_rows_picked_by_a_constant_index_train_in_chunks_of_the_exported_batch() -> None:
    """A graph whose batch cannot be freed (a Gather of row 0, valid only at batch 1) still
    trains at any batch size, one exported batch at a time."""
    w = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Gather", ["h", "row"], ["y"], axis=0),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([0], np.int64), "row")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    trainable = to_torch(model)
    assert trainable.chunk == 1
    module = _agrees_at_any_batch(model, rows=5)
    out = module.train()(torch.randn(5, 4))
    out.sum().backward()
    assert next(p for p in module.parameters() if p.requires_grad).grad is not None


def test_an_opset_20_encoder_with_gelu_converts_at_its_own_opset(gelu_encoder: Path) -> None:
    model = onnx.load(str(gelu_encoder))
    assert model.opset_import[0].version >= 20
    assert {"Gelu", "LayerNormalization"} <= {n.op_type for n in model.graph.node}
    assert prepare(model).opset_import[0].version == model.opset_import[0].version
    _agrees_at_any_batch(model)


def test_torchscript_shared_weights_train_separately_and_write_back(torchscript_cnn: Path) -> None:
    model = onnx.load(str(torchscript_cnn))
    shared = [n for n in model.graph.node if n.op_type == "Identity"]
    assert shared and any(t.name.startswith("onnx::") for t in model.graph.initializer)
    trainable = to_torch(model)
    assert not trainable.frozen
    with torch.no_grad():  # a training step, in effect: every weight moves its own way
        for param in trainable.module.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    written = write_back(trainable, model)
    assert len([n for n in written.graph.node if n.op_type == "Identity"]) < len(shared)
    x = np.random.default_rng(1).standard_normal((1, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want = trainable.module.eval()(torch.from_numpy(x)).numpy()
    got = ort.InferenceSession(written.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# --- end to end: `modelpress compress` retrains what the exporters wrote ----------------------


def _nuclear_one_epoch(model: Path, data: str, tmp_path: Path) -> tuple[dict, onnx.ModelProto, str]:
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    done = run_cli(
        "compress", str(model), "--method", "nuclear", "--target-macs", "0.5", "--epochs", "1",
        "--data", data, "-o", str(out), "--report", str(report), "--no-latency",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(report.read_text()), onnx.load(str(out)), done.stdout


def _input_shape(model: onnx.ModelProto) -> list[int | str]:
    return [d.dim_value or d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]


@pytest.mark.parametrize("export", ["fixed_cnn", "torchscript_cnn", "gelu_encoder"])
def test_nuclear_retrains_each_export_for_an_epoch(
    export: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    path: Path = request.getfixturevalue(export)
    data = "digits"
    if export == "gelu_encoder":
        rng = np.random.default_rng(0)
        x = rng.standard_normal((200, 6, 16)).astype(np.float32)
        data = str(tmp_path / "tokens.npz")
        np.savez(data, x=x, y=rng.integers(0, 4, 200).astype(np.int64))
    original = onnx.load(str(path))
    report, artifact, table = _nuclear_one_epoch(path, data, tmp_path)
    assert len(report["training"]["stages"]["train"]["history"]) == 1  # one epoch of regularized training ran
    assert report["after"]["macs"] < report["before"]["macs"]
    assert _input_shape(artifact) == _input_shape(original)  # the user's own batch and graph
    assert "MACs / sample" in table


def test_fixed_and_dynamic_batch_exports_retrain_to_the_same_accuracy(
    fixed_cnn: Path, dynamic_cnn: Path, tmp_path: Path
) -> None:
    """The same trained digits CNN, exported with its batch fixed at 1 and with a dynamic batch:
    one epoch of nuclear at target MACs 0.5 gives the same accuracy, to one image."""
    fixed, _, _ = _nuclear_one_epoch(fixed_cnn, "digits", tmp_path / "fixed")
    dynamic, _, _ = _nuclear_one_epoch(dynamic_cnn, "digits", tmp_path / "dynamic")
    images = fixed["dataset"]["evaluated_samples"]
    assert images == dynamic["dataset"]["evaluated_samples"] > 300
    assert fixed["before"]["accuracy"]["top1"] == dynamic["before"]["accuracy"]["top1"] > 0.8
    difference = abs(fixed["after"]["accuracy"]["top1"] - dynamic["after"]["accuracy"]["top1"]) * images
    assert difference <= 1 + 1e-9


def test_a_fixed_batch_export_takes_weighted_svd_and_static_int8(fixed_cnn: Path, tmp_path: Path) -> None:
    """Calibration (activation weighting, INT8 ranges) feeds a fixed-batch graph its own batch."""
    out = tmp_path / "small.onnx"
    done = run_cli(
        "compress", str(fixed_cnn), "--method", "svd", "--target-macs", "0.5", "--data", "digits",
        "--quantize", "static", "-o", str(out), "--no-latency",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert _input_shape(onnx.load(str(out))) == [1, 1, 8, 8]
