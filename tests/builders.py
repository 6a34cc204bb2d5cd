"""Small ONNX graphs written by hand, for exact checks without torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def value(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def gemm(
    k: int,
    n: int,
    trans_a: int = 0,
    trans_b: int = 0,
    bias: bool = True,
    alpha: float = 1.0,
    beta: float = 1.0,
    seed: int = 0,
) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "W")]
    ins = ["X", "W"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "C"))
        ins.append("C")
    x_shape = ["batch", k] if not trans_a else [k, "batch"]
    node = helper.make_node("Gemm", ins, ["Y"], transA=trans_a, transB=trans_b, alpha=alpha, beta=beta)
    return _model([node], [value("X", x_shape)], [value("Y", ["batch", n])], inits)


def matmul(shape_in: list, k: int, n: int, transposed_weight: bool = False, seed: int = 0) -> onnx.ModelProto:
    """MatMul with a constant right operand, optionally stored transposed behind a Transpose
    node (the way some exporters write ``x @ W.T``)."""
    rng = np.random.default_rng(seed)
    nodes = []
    if transposed_weight:
        inits = [numpy_helper.from_array(rng.standard_normal((n, k)).astype(np.float32), "Wt")]
        nodes.append(helper.make_node("Transpose", ["Wt"], ["W"], perm=[1, 0]))
    else:
        inits = [numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "W")]
    nodes.append(helper.make_node("MatMul", ["X", "W"], ["Y"]))
    return _model(nodes, [value("X", [*shape_in, k])], [value("Y", [*shape_in, n])], inits)


def conv(
    cin: int,
    cout: int,
    kernel: tuple[int, ...],
    hw: tuple[int, ...],
    strides=None,
    pads=None,
    dilations=None,
    group: int = 1,
    bias: bool = True,
    seed: int = 0,
) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((cout, cin // group, *kernel)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "W")]
    ins = ["X", "W"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "B"))
        ins.append("B")
    attrs = {"kernel_shape": list(kernel), "group": group}
    if strides:
        attrs["strides"] = list(strides)
    if pads:
        attrs["pads"] = list(pads)
    if dilations:
        attrs["dilations"] = list(dilations)
    node = helper.make_node("Conv", ins, ["Y"], **attrs)
    out = value("Y", ["batch", cout, *[f"d{i}" for i in range(len(hw))]])
    return _model([node], [value("X", ["batch", cin, *hw])], [out], inits)


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path
