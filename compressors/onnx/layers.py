"""The layers compression works on: every Gemm, MatMul, Conv and ConvTranspose node, whether
its weight can be factorized or pruned, and what it costs; and the graph clean-up every
rewrite ends with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from compressors.onnx.graph import Shape, attribute, constant_array, initializers, node_label, producers
from compressors.onnx.macs import node_macs


@dataclass
class Layer:
    """A Gemm/MatMul/Conv node, whether we can factorize it, and what it costs."""

    name: str
    op: str
    index: int  # position in graph.node
    weight: str  # name of the weight input
    weight_shape: tuple[int, ...]
    rows: int  # the matrix we factor is rows × cols
    cols: int
    params: int  # weight elements
    macs: int
    applications: int  # how many row vectors the matrix multiplies (MACs = applications·rows·cols)
    eligible: bool
    reason: str = ""  # why not, when not eligible

    @property
    def full_rank(self) -> int:
        return min(self.rows, self.cols)

    def cost_per_rank(self, metric: str) -> int:
        per = self.rows + self.cols
        return per if metric == "params" else per * self.applications

    def dense_cost(self, metric: str) -> int:
        return self.params if metric == "params" else self.macs


def find_layers(model: onnx.ModelProto, shapes: Mapping[str, Shape], batch: int = 1) -> list[Layer]:
    """Every Gemm, MatMul, Conv and ConvTranspose node, with eligibility for factorization.

    ``shapes`` are taken at ``batch`` samples; MACs are reported per sample."""
    graph = model.graph
    inits, made_by = initializers(graph), producers(graph)
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    layers = []
    for index, node in enumerate(graph.node):
        if node.op_type not in ("Gemm", "MatMul", "Conv", "ConvTranspose") or len(node.input) < 2:
            continue
        layers.append(_describe(node, index, shapes, inits, made_by, uses, batch))
    return layers


def _describe(
    node: onnx.NodeProto,
    index: int,
    shapes: Mapping[str, Shape],
    inits: Mapping[str, onnx.TensorProto],
    made_by: Mapping[str, onnx.NodeProto],
    uses: Mapping[str, int],
    batch: int,
) -> Layer:
    op, weight = node.op_type, node.input[1]
    macs = node_macs(node, shapes) // batch
    w_shape = shapes.get(weight) or ()
    base = dict(name=node_label(node, index), op=op, index=index, weight=weight, macs=macs)

    def refuse(reason: str, rows: int = 0, cols: int = 0) -> Layer:
        params = int(np.prod(w_shape)) if w_shape and _is_const(weight, inits, made_by) else 0
        return Layer(
            **base,
            weight_shape=tuple(w_shape),
            rows=rows,
            cols=cols,
            params=params,
            applications=0,
            eligible=False,
            reason=reason,
        )

    if not _is_const(weight, inits, made_by):
        return refuse("its weight is computed at run time, not stored in the model")
    if op == "ConvTranspose":
        return refuse("ConvTranspose layers are not factorized")
    shared = _shared_along(weight, uses, made_by)
    if shared is not None:
        return refuse(shared)
    value = constant_array(weight, inits, made_by)
    if value is None or value.dtype != np.float32:
        return refuse("only float32 weights are factorized")
    matrix = _matrix_shape(node, value)
    if isinstance(matrix, str):
        return refuse(matrix)
    rows, cols = matrix
    w_shape = value.shape
    params = rows * cols
    if macs <= 0:
        return refuse("its input shape could not be determined", rows, cols)
    applications = macs // params  # rows of activations per sample (spatial size for convs)
    if rows * cols <= rows + cols:
        return refuse(f"a {rows}×{cols} matrix cannot be made cheaper by factorizing", rows, cols)
    return Layer(
        **base,
        weight_shape=tuple(int(d) for d in w_shape),
        rows=rows,
        cols=cols,
        params=params,
        applications=applications,
        eligible=True,
    )


def _matrix_shape(node: onnx.NodeProto, value: np.ndarray) -> tuple[int, int] | str:
    """(rows, cols) of the matrix the layer multiplies by, or why it has none we factorize."""
    if node.op_type == "Conv":
        group = int(attribute(node, "group", 1))
        if group != 1 or value.ndim < 3:
            return f"grouped/depthwise convolution (group={group}) is left alone"
        return int(value.shape[0]), int(np.prod(value.shape[1:]))
    if value.ndim != 2:
        return "its weight is not a 2-D matrix"
    if node.op_type == "Gemm" and attribute(node, "transB", 0):
        return int(value.shape[1]), int(value.shape[0])
    return int(value.shape[0]), int(value.shape[1])


def _shared_along(weight: str, uses: Mapping[str, int], made_by: Mapping[str, onnx.NodeProto]) -> str | None:
    """Why the weight is shared, if it is: read by other nodes itself, or through the
    Transpose/Identity/Cast chain it comes from (a language model's head tied to its token
    embedding reads the embedding matrix through a Transpose)."""
    name = weight
    hops: list[str] = []
    while True:
        if uses.get(name, 0) > 1:
            via = f" (through {' and '.join(hops)})" if hops else ""
            return f"its weight{via} is shared with other nodes, so it is left whole for all of them"
        node = made_by.get(name)
        if node is None or node.op_type not in ("Transpose", "Identity", "Cast"):
            return None
        hops.append(node.op_type)
        name = node.input[0]


def _is_const(
    name: str, inits: Mapping[str, onnx.TensorProto], made_by: Mapping[str, onnx.NodeProto]
) -> bool:
    if name in inits:
        return True
    node = made_by.get(name)
    if node is None:
        return False
    if node.op_type == "Constant":
        return True
    return node.op_type in ("Transpose", "Identity", "Cast") and _is_const(node.input[0], inits, made_by)


def remove_unused(graph: onnx.GraphProto) -> None:
    """Drop nodes whose outputs nothing reads and initializers nothing uses (e.g. the
    Transpose that fed a factorized MatMul, and the dense weight itself)."""
    outputs = {o.name for o in graph.output}
    while True:
        needed = outputs | _names_read(graph)
        keep = [n for n in graph.node if any(o in needed for o in n.output if o)]
        if len(keep) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(keep)
    needed = outputs | _names_read(graph)
    removed = {t.name for t in graph.initializer if t.name not in needed}
    kept = [t for t in graph.initializer if t.name not in removed]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    # IR < 4 lists initializers among the graph inputs too
    for value in [v for v in graph.input if v.name in removed]:
        graph.input.remove(value)


def _names_read(graph: onnx.GraphProto) -> set[str]:
    """Every value name a node of the graph, or of a subgraph it holds, reads."""
    names: set[str] = set()
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            if attr.HasField("g"):
                names |= _names_read(attr.g)
            for sub in attr.graphs:
                names |= _names_read(sub)
    return names
