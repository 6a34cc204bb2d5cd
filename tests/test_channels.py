"""Removing zeroed output channels: exact on the outputs, smaller layers, ties reported, not broken."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn

from compressors.errors import InvalidSpec
from compressors.intake.loading import load_model
from compressors.methods.group_lasso import TrainedGroupLasso, _bound_affines
from compressors.onnx import metrics
from compressors.onnx.channels import group_norms, prunable_layers, remove_channels
from compressors.onnx.graph import constant_array, initializers, producers
from compressors.onnx.inspection import analysis_shapes, inspect_model
from compressors.onnx.macs import count_params
from compressors.onnx.ranks import Energy, Target
from compressors.training.convert import write_back
from compressors.training.prox import GroupLassoProx
from compressors.training.retrain import trainable_with_views
from examples import digits
from tests import builders


def _model(nodes: list, inputs: list, outputs: list, inits: dict[str, np.ndarray]) -> onnx.ModelProto:
    tensors = [numpy_helper.from_array(v, k) for k, v in inits.items()]
    model = helper.make_model(
        helper.make_graph(nodes, "g", inputs, outputs, tensors),
        opset_imports=[helper.make_opsetid("", builders.OPSET)],
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    sess = metrics.session(model)
    return sess.run(None, {sess.get_inputs()[0].name: x})


def _array(model: onnx.ModelProto, node_name: str, slot: int) -> np.ndarray:
    graph = model.graph
    node = next(n for n in graph.node if n.name == node_name)
    value = constant_array(node.input[slot], initializers(graph), producers(graph))
    assert value is not None
    return value


def _random(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _nonzero_groups(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """keep = the groups training left nonzero, for every layer that has a zero group."""
    return {name: np.flatnonzero(n > 0) for name, n in group_norms(model).items() if (n == 0).any()}


class _Named(nn.Module):
    """Calls the wrapped module with its input named ``x``, as ``digits.export`` declares it."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# -- by hand: Gemm / MatMul chain ------------------------------------------------------------


def _mlp() -> onnx.ModelProto:
    """x(6) → Gemm 'hidden' (transB) → Relu → MatMul 'proj' + per-neuron bias → Relu → Gemm 'head',
    with the MatMul weight stored transposed behind a Transpose, as some exporters write it."""
    w1, b1 = _random(8, 6, seed=1), _random(8, seed=2)
    w2, b2 = _random(8, 5, seed=3), _random(5, seed=4)
    w1[[1, 4, 6]] = 0  # neurons 1, 4, 6 of 'hidden', weights and bias
    b1[[1, 4, 6]] = 0
    w2[:, 2] = 0  # neuron 2 of 'proj', weights and bias
    b2[2] = 0
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="hidden", transB=1),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Transpose", ["w2t"], ["w2"], perm=[1, 0]),
        helper.make_node("MatMul", ["hr", "w2"], ["p"], name="proj"),
        helper.make_node("Add", ["p", "b2"], ["pb"]),
        helper.make_node("Relu", ["pb"], ["pr"]),
        helper.make_node("Gemm", ["pr", "w3", "b3"], ["y"], name="head"),
    ]
    inits = {
        "w1": w1,
        "b1": b1,
        "w2t": w2.T.copy(),
        "b2": b2,
        "w3": _random(5, 3, seed=5),
        "b3": _random(3, seed=6),
    }
    return _model(nodes, [builders.value("x", ["batch", 6])], [builders.value("y", ["batch", 3])], inits)


def test_zeroed_neurons_of_an_mlp_are_removed_exactly() -> None:
    model = _mlp()
    original = model.SerializeToString()
    keep = _nonzero_groups(model)
    assert set(keep) == {"hidden", "proj"}
    result = remove_channels(model, keep)
    onnx.checker.check_model(result.model)
    assert result.removed == {"hidden": 3, "proj": 1}
    assert result.kept == {"hidden": 5, "proj": 4}
    x = _random(7, 6, seed=9)
    np.testing.assert_allclose(_run(result.model, x)[0], _run(model, x)[0], atol=1e-5, rtol=0)
    assert _array(result.model, "hidden", 1).shape == (5, 6)
    assert _array(result.model, "hidden", 2).shape == (5,)
    assert _array(result.model, "proj", 1).shape == (5, 4)
    assert _array(result.model, "head", 1).shape == (4, 3)
    # the sliced MatMul weight is stored as is; the transposed original and its Transpose are gone
    assert "Transpose" not in {n.op_type for n in result.model.graph.node}
    assert "w2t" not in {t.name for t in result.model.graph.initializer}
    # hidden: 3 rows of w1 (6 each), 3 biases, 3 rows of w2 (5 each);
    # proj: 1 column of the remaining w2 (5), its Add constant, 1 row of w3 (3)
    assert count_params(model)[0] - count_params(result.model)[0] == 3 * 6 + 3 + 3 * 5 + 5 + 1 + 3
    assert model.SerializeToString() == original  # the input model is untouched


def test_asking_to_keep_no_channel_keeps_the_strongest() -> None:
    model = _mlp()
    strongest = int(np.argmax(group_norms(model, ["hidden"])["hidden"]))
    result = remove_channels(model, {"hidden": []})
    assert result.kept == {"hidden": 1}
    kept_row = _array(result.model, "hidden", 1)[0]
    np.testing.assert_array_equal(kept_row, _array(model, "hidden", 1)[strongest])


def test_group_norms_are_the_l2_norms_of_each_neuron_with_its_bias() -> None:
    model = _mlp()
    norms = group_norms(model)
    w1, b1 = _array(model, "hidden", 1), _array(model, "hidden", 2)
    np.testing.assert_allclose(norms["hidden"], np.sqrt((w1**2).sum(axis=1) + b1**2), rtol=1e-6)
    # a MatMul's bias is the constant of the Add that follows it
    b2 = next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == "b2")
    w2 = _array(model, "proj", 1)
    np.testing.assert_allclose(norms["proj"], np.sqrt((w2**2).sum(axis=0) + b2**2), rtol=1e-6)
    assert np.flatnonzero(norms["hidden"] == 0).tolist() == [1, 4, 6]


@pytest.mark.parametrize(
    ("keep", "message"),
    [
        ({"nowhere": [0]}, "no layer named 'nowhere'"),
        ({"hidden": [0, 8]}, "names channel 8, but the layer has channels 0 to 7"),
        ({"hidden": np.ones(8, dtype=bool)}, "np.flatnonzero"),
    ],
)
def test_a_keep_that_does_not_fit_the_model_is_refused_in_one_sentence(keep: dict, message: str) -> None:
    with pytest.raises(InvalidSpec, match=message):
        remove_channels(_mlp(), keep)


# -- by hand: channel-wise ops between conv and the layers that read it ------------------------


def _conv_branches() -> onnx.ModelProto:
    """conv 'a' (4 filters) → BatchNorm → PRelu (per-channel slope) → x·sigmoid(x) → ×c (per
    channel) → +0.5, then two readers: MaxPool → Flatten → Gemm 'fc', and a spatial ReduceMean
    → MatMul 'mm'."""
    nodes = [
        helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="a", kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("BatchNormalization", ["a", "scale", "shift", "mean", "var"], ["n"]),
        helper.make_node("PRelu", ["n", "slope"], ["r"]),
        helper.make_node("Sigmoid", ["r"], ["s"]),
        helper.make_node("Mul", ["r", "s"], ["sw"]),
        helper.make_node("Mul", ["sw", "gain"], ["g"]),
        helper.make_node("Add", ["g", "half"], ["h"]),
        helper.make_node("MaxPool", ["h"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "wfc"], ["y1"], name="fc", transB=1),
        helper.make_node("ReduceMean", ["h"], ["m"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["m", "wmm"], ["y2"], name="mm"),
    ]
    inits = {
        "wa": _random(4, 3, 3, 3, seed=1),
        "ba": _random(4, seed=2),
        "scale": _random(4, seed=3),
        "shift": _random(4, seed=4),
        "mean": _random(4, seed=5),
        "var": np.abs(_random(4, seed=6)) + 0.5,
        "slope": _random(4, 1, 1, seed=7),
        "gain": _random(1, 4, 1, 1, seed=8),
        "half": np.array(0.5, dtype=np.float32),
        "wfc": _random(3, 4 * 3 * 3, seed=9),
        "wmm": _random(4, 2, seed=10),
    }
    outputs = [builders.value("y1", ["batch", 3]), builders.value("y2", ["batch", 2])]
    return _model(nodes, [builders.value("x", ["batch", 3, 6, 6])], outputs, inits)


def test_channels_are_followed_through_channel_wise_ops_to_every_reader() -> None:
    model = _conv_branches()
    kept = np.array([0, 2])
    result = remove_channels(model, {"a": kept})
    onnx.checker.check_model(result.model)
    assert result.removed == {"a": 2}
    # the reference: the original with the readers' inputs from channels 1 and 3 zeroed,
    # so those channels count for nothing whatever BatchNorm and the constants do to them
    reference = onnx.ModelProto()
    reference.CopyFrom(model)
    for tensor in reference.graph.initializer:
        if tensor.name == "wfc":
            wfc = numpy_helper.to_array(tensor).reshape(3, 4, 9).copy()
            wfc[:, [1, 3]] = 0
            tensor.CopyFrom(numpy_helper.from_array(wfc.reshape(3, 36), "wfc"))
        if tensor.name == "wmm":
            wmm = numpy_helper.to_array(tensor).copy()
            wmm[[1, 3]] = 0
            tensor.CopyFrom(numpy_helper.from_array(wmm, "wmm"))
    x = _random(2, 3, 6, 6, seed=11)
    for got, want in zip(_run(result.model, x), _run(reference, x), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    shapes = {t.name: tuple(t.dims) for t in result.model.graph.initializer}
    assert shapes["scale"] == shapes["var"] == (2,)
    assert shapes["slope"] == (2, 1, 1)
    assert shapes["gain"] == (1, 2, 1, 1)
    assert shapes["half"] == ()
    assert shapes["wfc"] == (3, 2 * 3 * 3)
    assert shapes["wmm"] == (2, 2)


def _tied_model(reader: str) -> tuple[onnx.ModelProto, str]:
    """A conv 'a' whose output meets ``reader``, and the word its tie reason must contain."""
    x = builders.value("x", ["batch", 4, 5, 5])
    conv = helper.make_node("Conv", ["x", "wa"], ["a"], name="a", kernel_shape=[1, 1])
    inits: dict[str, np.ndarray] = {"wa": _random(4, 4, 1, 1)}
    out = builders.value("y", ["n", "c", "h", "w"])
    if reader == "residual":
        nodes, word = [helper.make_node("Add", ["a", "x"], ["y"])], "residual"
    elif reader == "concat":
        nodes, word = [helper.make_node("Concat", ["a", "x"], ["y"], axis=1)], "Concat"
    elif reader == "softmax":
        nodes, word = [helper.make_node("Softmax", ["a"], ["y"], axis=1)], "mixes channels"
    elif reader == "output":
        nodes, word = [], "graph output"
        conv.output[0] = "y"
    elif reader == "grouped":
        inits["wg"] = _random(4, 2, 1, 1)
        nodes = [helper.make_node("Conv", ["a", "wg"], ["y"], kernel_shape=[1, 1], group=2)]
        word = "group=2"
    elif reader == "shared":
        inits["wb"] = _random(4, 4, 1, 1)
        nodes = [
            helper.make_node("Conv", ["a", "wb"], ["b"], kernel_shape=[1, 1]),
            helper.make_node("Conv", ["b", "wb"], ["y"], kernel_shape=[1, 1]),
        ]
        word = "shared"
    else:
        nodes, word = [helper.make_node("Transpose", ["a"], ["y"], perm=[0, 2, 3, 1])], "Transpose"
    return _model([conv, *nodes], [x], [out], inits), word


@pytest.mark.parametrize(
    "reader", ["residual", "concat", "softmax", "output", "grouped", "shared", "unknown"]
)
def test_a_layer_whose_channels_cannot_go_is_left_whole_with_the_reason(reader: str) -> None:
    model, word = _tied_model(reader)
    assert word in (prunable_layers(model, analysis_shapes(model)[0])["a"] or "")
    result = remove_channels(model, {"a": [0]})
    assert result.removed == {} and word in result.tied["a"]
    x = _random(1, 4, 5, 5, seed=3)
    np.testing.assert_array_equal(_run(result.model, x)[0], _run(model, x)[0])


# -- torch exports ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_mlp(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, onnx.ModelProto]:
    """A 6-16-12-3 nn.Sequential with neurons of both hidden layers zeroed, as group lasso leaves them."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))
    with torch.no_grad():
        for layer, dead in ((net[0], [0, 3, 5, 9, 15]), (net[2], [4, 7])):
            layer.weight[dead] = 0
            layer.bias[dead] = 0
    path = digits.export(_Named(net), torch.zeros(2, 6), tmp_path_factory.mktemp("mlp") / "mlp.onnx")
    return net.eval(), onnx.load(str(path))


def test_removal_leaves_a_model_whose_output_equals_the_torch_mlp(torch_mlp) -> None:
    net, model = torch_mlp
    keep = _nonzero_groups(model)
    result = remove_channels(model, keep)
    onnx.checker.check_model(result.model)
    assert sorted(result.removed.values()) == [2, 5]
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = net(x).numpy()
    np.testing.assert_allclose(_run(result.model, x.numpy())[0], want, atol=1e-5, rtol=0)
    weights = sorted(tuple(t.dims) for t in result.model.graph.initializer if len(t.dims) == 2)
    assert weights == [(3, 10), (10, 11), (11, 6)]


class _ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Conv2d(4, 6, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


@pytest.fixture(scope="module")
def torch_cnn(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    """Conv→BN→ReLU→Conv→ReLU→MaxPool→Flatten→Linear with filters 1, 3 and 0, 4 zeroed
    (for the first, its BatchNorm shift and mean too, so the channel is zero after BN)."""
    torch.manual_seed(0)
    net = _ConvNet()
    first, norm, second = net.features[0], net.features[1], net.features[3]
    with torch.no_grad():
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
        for conv, dead in ((first, [1, 3]), (second, [0, 4])):
            conv.weight[dead] = 0
            conv.bias[dead] = 0
        norm.bias[[1, 3]] = 0
        norm.running_mean[[1, 3]] = 0
    path = digits.export(net, torch.zeros(2, 1, 8, 8), tmp_path_factory.mktemp("cnn") / "cnn.onnx")
    return net.eval(), path


def test_zeroed_filters_of_a_cnn_are_removed_exactly_and_macs_drop(torch_cnn) -> None:
    net, path = torch_cnn
    model = onnx.load(str(path))
    keep = _nonzero_groups(model)
    assert len(keep) == 2
    result = remove_channels(model, keep)
    onnx.checker.check_model(result.model)
    assert sorted(result.removed.values()) == [2, 2]
    x = np.random.default_rng(2).random((5, 1, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(_run(result.model, x)[0], _run(model, x)[0], atol=1e-5, rtol=0)
    with torch.no_grad():
        np.testing.assert_allclose(_run(result.model, x)[0], net(torch.from_numpy(x)).numpy(), atol=1e-5)
    (reshape,) = [n for n in result.model.graph.node if n.op_type == "Reshape"]
    target = next(t for t in result.model.graph.initializer if t.name == reshape.input[1])
    assert numpy_helper.to_array(target).tolist() == [-1, 4 * 4 * 4]  # was [-1, 6·4·4]
    # conv 4→2 filters over 8×8, conv 6→4 filters reading 2 channels, Linear 96→64 features
    assert inspect_model(model).macs == 64 * 4 * 9 + 64 * 6 * 4 * 9 + 96 * 3
    assert inspect_model(result.model).macs == 64 * 2 * 9 + 64 * 4 * 2 * 9 + 64 * 3


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Conv2d(4, 4, 3, padding=1)
        self.outer = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.outer(torch.relu(self.inner(x)))


def test_a_conv_feeding_a_residual_add_is_tied_and_the_inner_one_pruned(tmp_path: Path) -> None:
    torch.manual_seed(0)
    block = _Residual()
    with torch.no_grad():
        for conv in (block.inner, block.outer):
            conv.weight[2] = 0
            conv.bias[2] = 0
    model = onnx.load(str(digits.export(block, torch.zeros(2, 4, 6, 6), tmp_path / "res.onnx")))
    keep = _nonzero_groups(model)
    assert len(keep) == 2
    result = remove_channels(model, keep)
    onnx.checker.check_model(result.model)
    (inner,) = result.removed
    (outer,) = result.tied
    assert result.removed[inner] == 1
    assert "residual" in result.tied[outer] and "Add" in result.tied[outer]
    x = np.random.default_rng(3).standard_normal((2, 4, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(_run(result.model, x)[0], _run(model, x)[0], atol=1e-5, rtol=0)


def test_group_lasso_switches_off_channels_behind_a_batchnorm_exactly(tmp_path: Path) -> None:
    """With BatchNormalization kept in the graph, a channel is off only when its BN scale and
    shift are zero with its filter; the prox zeroes them as one group, so removal is exact."""
    torch.manual_seed(0)
    net = _ConvNet()
    with torch.no_grad():
        norm = net.features[1]
        norm.bias.uniform_(0.5, 1.0)  # a zero filter alone would still emit these shifts
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
    path = digits.export(net, torch.zeros(2, 1, 8, 8), tmp_path / "bn.onnx", optimize=False)
    loaded = load_model(path, tmp_path / "w")
    assert "BatchNormalization" in [n.op_type for n in loaded.proto.graph.node]
    shapes, _ = analysis_shapes(loaded.proto)
    trainable, views = trainable_with_views(loaded.proto, None)
    verdicts = prunable_layers(loaded.proto, shapes)
    removable = [v for v in views if verdicts.get(v.layer) is None]
    affines = _bound_affines(loaded.proto, shapes, trainable, removable)
    first = removable[0]
    assert len(affines[first.layer]) == 2  # the BN's scale and shift
    prox = GroupLassoProx(
        trainable.module, [first], 1.0, {first.param: [param for param, _ in affines[first.layer]]}
    )
    norms = prox._rows(first).norm(dim=1)
    prox.after_step(1, float(norms.sort().values[1]) + 1e-6)  # threshold: the 2nd smallest group
    source = write_back(trainable, loaded.proto)
    trained = TrainedGroupLasso(
        source, {}, [first.layer], summary={}, affines={first.layer: [t for _, t in affines[first.layer]]}
    )
    result = trained.cut(Energy(1.0))
    first_conv = next(n for n in result.model.graph.node if n.op_type == "Conv")
    assert _array(result.model, first_conv.name, 1).shape[0] == 2  # 2 of 4 filters removed
    (norm_node,) = [n for n in result.model.graph.node if n.op_type == "BatchNormalization"]
    assert _array(result.model, norm_node.name, 1).shape == (2,)  # and their BN entries
    x = _random(5, 1, 8, 8, seed=3)
    with torch.no_grad():
        expected = trainable.module.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_run(source, x)[0], expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(_run(result.model, x)[0], expected, atol=1e-5, rtol=0)


def test_a_target_removes_zeroed_groups_first_then_the_weakest_of_each_layer(tmp_path: Path) -> None:
    """Norms are compared relative to their own layer: a layer whose weights are on a small
    scale (ReLU lets a layer be scaled down and the next scaled up) is not emptied first."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    with torch.no_grad():
        net[0].weight[[2, 7]] = 0
        net[0].bias[[2, 7]] = 0
        net[2].weight.mul_(0.01)  # same function: the next layer makes up for it
        net[2].bias.mul_(0.01)
        net[4].weight.mul_(100.0)
    path = digits.export(_Named(net), torch.zeros(2, 6), tmp_path / "mlp.onnx")
    model = onnx.load(str(path))
    first, second, _ = [n.name for n in model.graph.node if n.op_type == "Gemm"]
    trained = TrainedGroupLasso(model, {}, [first, second], summary={})
    result = trained.cut(Target(0.5, "macs"))
    widths = {
        name: _array(result.model, name, 1).shape[0] for name in (first, second)
    }  # Gemm weights are out × in here (transB=1)
    assert widths[first] <= 14  # the two zeroed neurons went
    assert widths[second] >= 9  # the small-scale layer lost only its weakest neurons
    assert inspect_model(result.model).macs <= 0.5 * inspect_model(model).macs
