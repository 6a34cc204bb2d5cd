"""Counting parameters, nonzeros and multiply-accumulates (MACs) of an ONNX graph.

MACs are those of Conv, ConvTranspose, Gemm and MatMul at the given input shapes (batch 1
by default); elementwise ops, normalizations and pooling count as zero, as is usual when
comparing compressed models. Parameters are the elements of floating-point initializers
(integer initializers are shapes and indices, not weights).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from compressors.onnx.graph import MAC_OPS, Shape, attribute, is_float_tensor, node_label, tensor_numel


def _prod(values: Shape | list[int]) -> int:
    n = 1
    for v in values:
        n *= int(v)
    return n


def node_macs(node: onnx.NodeProto, shapes: Mapping[str, Shape]) -> int:
    """MACs of one node, or 0 for ops we do not count or whose shapes are unknown."""
    op = node.op_type
    if op not in MAC_OPS:
        return 0
    if op == "Gemm":
        a, b = shapes.get(node.input[0]), shapes.get(node.input[1])
        if a is None or b is None or len(a) != 2 or len(b) != 2:
            return 0
        m, k = (a[1], a[0]) if attribute(node, "transA", 0) else a
        n = b[0] if attribute(node, "transB", 0) else b[1]
        return int(m) * int(k) * int(n)
    if op == "MatMul":
        a, b = shapes.get(node.input[0]), shapes.get(node.input[1])
        y = shapes.get(node.output[0])
        if a is None or b is None:
            return 0
        if y is not None:
            # each output element is a dot product of length K (batch broadcast included)
            return _prod(y) * int(a[-1])
        return _prod(a) * (int(b[-1]) if len(b) > 1 else 1)
    w, y = shapes.get(node.input[1]), shapes.get(node.output[0])
    if w is None or y is None:
        return 0
    if op == "Conv":
        # every output element sums Cin/group × kernel products: y_numel × W[1] × prod(k)
        return _prod(y) * int(w[1]) * _prod(w[2:])
    x = shapes.get(node.input[0])
    if x is None:
        return 0
    # ConvTranspose: every input element scatters into Cout/group × kernel outputs
    # (its weight is Cin × Cout/group × k...)
    return _prod(x) * int(w[1]) * _prod(w[2:])


def count_macs(model: onnx.ModelProto, shapes: Mapping[str, Shape]) -> dict[str, int]:
    """MACs per counted node (keyed by ``node_label``), in graph order."""
    return {
        node_label(node, i): node_macs(node, shapes)
        for i, node in enumerate(model.graph.node)
        if node.op_type in MAC_OPS
    }


def count_params(model: onnx.ModelProto) -> tuple[int, int]:
    """(parameters, nonzeros) over floating-point initializers and Constant tensors."""
    params = nonzeros = 0
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            tensors.extend(a.t for a in node.attribute if a.name == "value")
    for tensor in tensors:
        if not is_float_tensor(tensor):
            continue
        params += tensor_numel(tensor)
        nonzeros += int(np.count_nonzero(numpy_helper.to_array(tensor)))
    return params, nonzeros
