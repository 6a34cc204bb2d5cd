"""Reading an ONNX graph: constants, static shapes at a given batch size, tensor walks.

Shapes come from ONNX shape inference with data propagation; whatever it leaves unknown
(dynamic Reshape targets, custom domains) is read off one onnxruntime run on zeros. The
probe runs the model, so callers only use it on models that passed validation.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

Shape = tuple[int, ...]

# Ops whose multiply-accumulates we count, and whose operand shapes we therefore need.
MAC_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def node_label(node: onnx.NodeProto, index: int) -> str:
    """A stable, unique-enough name for reports: the node's own name or op and position."""
    return node.name or f"{node.op_type}_{index}"


def attribute(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def iter_graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a graph declares: initializers, Constant attributes, subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor.values
                yield attr.sparse_tensor.indices
            if attr.HasField("g"):
                yield from iter_graph_tensors(attr.g)
            for sub in attr.graphs:
                yield from iter_graph_tensors(sub)


def tensor_numel(tensor: onnx.TensorProto) -> int:
    n = 1
    for d in tensor.dims:
        n *= int(d)
    return n


def is_float_tensor(tensor: onnx.TensorProto) -> bool:
    return tensor.data_type in (
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.BFLOAT16,
        onnx.TensorProto.DOUBLE,
    )


def initializers(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in graph.initializer}


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output if out}


_CONSTANT_LISTS = {
    "value_ints": np.int64,
    "value_int": np.int64,
    "value_floats": np.float32,
    "value_float": np.float32,
}


def constant_array(
    name: str,
    inits: Mapping[str, onnx.TensorProto],
    made_by: Mapping[str, onnx.NodeProto],
) -> np.ndarray | None:
    """The value of ``name`` when it is a constant: an initializer, a Constant node, or a
    Transpose/Identity/Cast of one (exporters write ``x @ W.T`` as MatMul(x, Transpose(W)))."""
    if name in inits:
        return numpy_helper.to_array(inits[name])
    node = made_by.get(name)
    if node is None:
        return None
    if node.op_type == "Constant":
        for attr in node.attribute:
            if attr.name == "value":
                return numpy_helper.to_array(attr.t)
            if attr.name in _CONSTANT_LISTS:
                return np.array(onnx.helper.get_attribute_value(attr), dtype=_CONSTANT_LISTS[attr.name])
        return None
    if node.op_type in ("Transpose", "Identity", "Cast") and node.input:
        inner = constant_array(node.input[0], inits, made_by)
        if inner is None:
            return None
        if node.op_type == "Identity":
            return inner
        if node.op_type == "Cast":
            to = next(a.i for a in node.attribute if a.name == "to")
            return inner.astype(onnx.helper.tensor_dtype_to_np_dtype(to))
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        return np.transpose(inner, perm)
    return None


def concrete_input_shapes(
    model: onnx.ModelProto, batch: int, sample_shapes: Mapping[str, Shape] | None = None
) -> dict[str, Shape]:
    """Concrete shapes for the graph inputs: a symbolic leading (batch) dimension becomes
    ``batch``; other symbolic dims come from ``sample_shapes`` (a dataset's per-sample shape)
    or become 1. A fixed leading dimension is kept: the exporter baked that batch in."""
    shapes: dict[str, Shape] = {}
    for value in graph_inputs(model):
        dims = value.type.tensor_type.shape.dim
        sample = (sample_shapes or {}).get(value.name)
        concrete = []
        for i, d in enumerate(dims):
            if d.HasField("dim_value") and d.dim_value > 0:
                concrete.append(int(d.dim_value))
            elif i == 0:
                concrete.append(batch)
            elif sample is not None and len(sample) == len(dims) - 1:
                concrete.append(int(sample[i - 1]))
            else:
                concrete.append(1)
        shapes[value.name] = tuple(concrete)
    return shapes


def fixed_batch(model: onnx.ModelProto) -> int | None:
    """The batch size baked into the first input, or None when it is symbolic."""
    inputs = graph_inputs(model)
    if not inputs or not inputs[0].type.tensor_type.shape.dim:
        return None
    first = inputs[0].type.tensor_type.shape.dim[0]
    return int(first.dim_value) if first.HasField("dim_value") and first.dim_value > 0 else None


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    init_names = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in init_names]


def with_fixed_inputs(model: onnx.ModelProto, shapes: Mapping[str, Shape]) -> onnx.ModelProto:
    """A shallow copy of the model whose graph inputs carry the given concrete shapes."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in fixed.graph.input:
        if value.name not in shapes:
            continue
        shape = value.type.tensor_type.shape
        del shape.dim[:]
        for d in shapes[value.name]:
            shape.dim.add().dim_value = int(d)
    return fixed


def infer_static_shapes(model: onnx.ModelProto, shapes: Mapping[str, Shape]) -> dict[str, Shape]:
    """Static shapes of every value shape inference can resolve, given input shapes."""
    fixed = with_fixed_inputs(model, shapes)
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed, strict_mode=False, data_prop=True)
    except Exception:  # inference is best effort: the probe fills what it leaves
        inferred = fixed
    known: dict[str, Shape] = dict(shapes)
    values: Sequence[onnx.ValueInfoProto] = [
        *inferred.graph.value_info,
        *inferred.graph.output,
        *inferred.graph.input,
    ]
    for value in values:
        tensor_type = value.type.tensor_type
        if not tensor_type.HasField("shape"):
            continue
        dims = tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            known[value.name] = tuple(int(d.dim_value) for d in dims)
    for tensor in model.graph.initializer:
        known[tensor.name] = tuple(int(d) for d in tensor.dims)
    return known


def probe_shapes(
    model: onnx.ModelProto, shapes: Mapping[str, Shape], names: Sequence[str]
) -> dict[str, Shape]:
    """Run the model once on zeros with ``names`` exposed as outputs and read their shapes."""
    import onnxruntime as ort

    probe = with_fixed_inputs(model, shapes)
    existing = {o.name for o in probe.graph.output}
    for name in names:
        if name not in existing:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = zero_feeds(session, shapes)
    outputs = session.run(list(names), feeds)
    return {name: tuple(np.shape(out)) for name, out in zip(names, outputs, strict=True)}


def zero_feeds(session: object, shapes: Mapping[str, Shape]) -> dict[str, np.ndarray]:
    feeds: dict[str, np.ndarray] = {}
    for meta in session.get_inputs():  # type: ignore[attr-defined]
        dtype = _ORT_DTYPES.get(meta.type, np.float32)
        feeds[meta.name] = np.zeros(shapes[meta.name], dtype=dtype)
    return feeds


_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def static_shapes(model: onnx.ModelProto, shapes: Mapping[str, Shape]) -> dict[str, Shape]:
    """Shapes of all inputs and outputs of the ops we count MACs for, at the given inputs."""
    known = infer_static_shapes(model, shapes)
    needed = [
        name
        for node in model.graph.node
        if node.op_type in MAC_OPS
        for name in (*node.input[:2], *node.output[:1])
        if name and name not in known
    ]
    if needed:
        known.update(probe_shapes(model, shapes, list(dict.fromkeys(needed))))
    return known


def shape_constant(
    name: str, inits: dict[str, onnx.TensorProto], made_by: dict[str, onnx.NodeProto]
) -> np.ndarray | None:
    """A shape operand that is constant: one tensor, or a Concat of constant pieces (how an
    unoptimized dynamo export builds a Reshape target)."""
    node = made_by.get(name)
    if node is not None and node.op_type == "Concat":
        pieces = [shape_constant(piece, inits, made_by) for piece in node.input]
        if all(p is not None and p.ndim == 1 for p in pieces):
            return np.concatenate([p for p in pieces if p is not None])
        return None
    return constant_array(name, inits, made_by)
