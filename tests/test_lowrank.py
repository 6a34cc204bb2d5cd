"""Factorization on the ONNX graph: exact at full rank, cheaper when truncated, skips what it must."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from compressors.onnx import metrics
from compressors.onnx.inspection import analysis_shapes
from compressors.onnx.layers import find_layers
from compressors.onnx.lowrank import factorize
from compressors.onnx.ranks import Energy, Fixed
from tests import builders
from tests.conftest import run_cli


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = metrics.session(model)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _full_rank_diff(model: onnx.ModelProto, x: np.ndarray) -> tuple[float, onnx.ModelProto]:
    shapes, batch = analysis_shapes(model)
    result = factorize(model, shapes, Fixed(10_000), batch)
    assert all(layer.rank == layer.full_rank for layer in result.layers)
    onnx.checker.check_model(result.model)
    before, after = _run(model, x), _run(result.model, x)
    return float(np.abs(before - after).max() / np.abs(before).max()), result.model


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("bias", [True, False])
def test_gemm_full_rank_is_exact(trans_a: int, trans_b: int, bias: bool) -> None:
    model = builders.gemm(24, 16, trans_a, trans_b, bias, alpha=0.7, beta=1.3)
    x = np.random.default_rng(1).standard_normal((24, 5) if trans_a else (5, 24)).astype(np.float32)
    diff, factored = _full_rank_diff(model, x)
    assert diff <= 1e-4
    assert [n.op_type for n in factored.graph.node] == ["Gemm", "Gemm"]


@pytest.mark.parametrize("transposed", [False, True])
def test_matmul_with_constant_weight_full_rank_is_exact(transposed: bool) -> None:
    model = builders.matmul(["batch", 7], 32, 20, transposed_weight=transposed)
    x = np.random.default_rng(2).standard_normal((3, 7, 32)).astype(np.float32)
    diff, factored = _full_rank_diff(model, x)
    assert diff <= 1e-4
    # the Transpose and the dense weight are gone, only the two factors remain
    assert [n.op_type for n in factored.graph.node] == ["MatMul", "MatMul"]
    assert len(factored.graph.initializer) == 2


@pytest.mark.parametrize(
    ("kernel", "strides", "pads", "dilations"),
    [
        ((3, 3), None, None, None),
        ((3, 3), (2, 2), (1, 1, 1, 1), None),
        ((3, 5), (1, 2), (0, 2, 1, 2), None),
        ((3, 3), None, (2, 2, 2, 2), (2, 2)),
        ((1, 1), None, None, None),
        ((5, 2), (2, 1), (2, 0, 2, 1), (1, 2)),
    ],
)
def test_conv_full_rank_is_exact(kernel, strides, pads, dilations) -> None:
    model = builders.conv(6, 10, kernel, (13, 11), strides, pads, dilations)
    x = np.random.default_rng(3).standard_normal((2, 6, 13, 11)).astype(np.float32)
    diff, factored = _full_rank_diff(model, x)
    assert diff <= 1e-4
    first, second = factored.graph.node
    assert (first.op_type, second.op_type) == ("Conv", "Conv")
    assert next(a.ints for a in second.attribute if a.name == "kernel_shape") == [1, 1]


def test_conv1d_full_rank_is_exact() -> None:
    model = builders.conv(4, 8, (3,), (20,), strides=(2,), pads=(1, 1))
    x = np.random.default_rng(4).standard_normal((2, 4, 20)).astype(np.float32)
    diff, _ = _full_rank_diff(model, x)
    assert diff <= 1e-4


def test_grouped_and_depthwise_convs_are_left_alone_and_listed() -> None:
    model = builders.conv(8, 8, (3, 3), (9, 9), pads=(1, 1, 1, 1), group=8)
    shapes, batch = analysis_shapes(model)
    (layer,) = find_layers(model, shapes, batch)
    assert not layer.eligible
    assert "group=8" in layer.reason
    result = factorize(model, shapes, Energy(0.5), batch)
    assert result.layers == []
    assert [n.op_type for n in result.model.graph.node] == ["Conv"]


def test_a_layer_is_factorized_only_when_that_lowers_its_cost() -> None:
    # 64×10: break-even rank is ceil(640/74) = 9; energy 1.0 needs rank 10 → stays dense
    model = builders.gemm(64, 10)
    shapes, batch = analysis_shapes(model)
    (result,) = factorize(model, shapes, Energy(1.0), batch).layers
    assert result.rank is None and result.params_after == result.params_before


def test_truncated_factorization_shrinks_params_and_macs_as_reported() -> None:
    model = builders.matmul(["batch"], 256, 256)
    shapes, batch = analysis_shapes(model)
    result = factorize(model, shapes, Fixed(16), batch)
    (layer,) = result.layers
    assert layer.params_after == 16 * (256 + 256)
    assert layer.macs_after == 16 * (256 + 256)
    assert result.macs_after == layer.macs_after
    stored = sum(int(np.prod(t.dims)) for t in result.model.graph.initializer)
    assert stored == layer.params_after


def test_shared_weights_are_left_alone_and_listed(tmp_path: Path) -> None:
    """A weight read by two MatMuls is neither factorized nor changed; the report says why,
    while the unshared layer beside it is factorized."""
    rng = np.random.default_rng(0)
    shared = rng.standard_normal((64, 64)).astype(np.float32)
    own = rng.standard_normal((64, 64)).astype(np.float32)
    nodes = [
        onnx.helper.make_node("MatMul", ["X", "W"], ["A"], name="first"),
        onnx.helper.make_node("MatMul", ["A", "W"], ["B"], name="second"),
        onnx.helper.make_node("MatMul", ["B", "V"], ["Y"], name="third"),
    ]
    inits = [onnx.numpy_helper.from_array(shared, "W"), onnx.numpy_helper.from_array(own, "V")]
    graph = onnx.helper.make_graph(
        nodes, "g", [builders.value("X", ["batch", 64])], [builders.value("Y", ["batch", 64])], inits
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    path = builders.save(model, tmp_path / "shared.onnx")
    out = tmp_path / "small.onnx"
    done = run_cli("compress", str(path), "--energy", "0.5", "-o", str(out), "--json", "--no-latency")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    ranks = {layer["name"]: layer["rank"] for layer in report["layers"]}
    assert ranks["third"] is not None and "first" not in ranks and "second" not in ranks
    for name in ("first", "second"):
        assert f"{name} (MatMul) left as is: its weight is shared with other nodes." in report["notes"]
    written = onnx.load(str(out))
    kept = {t.name: onnx.numpy_helper.to_array(t) for t in written.graph.initializer}
    np.testing.assert_array_equal(kept["W"], shared)
    assert [list(n.input) for n in written.graph.node if n.name in ("first", "second")] == [
        ["X", "W"],
        ["A", "W"],
    ]
