"""Preparing an ONNX graph for onnx2torch, and the retraining verdict, without torch.

``prepare`` returns a copy that converts with identical semantics (float Constants hoisted
to initializers, weights shared through Identity materialized, copied weights untied, the
opset brought down only where that alone helps, ``Reshape(allowzero=1)`` relaxed where it
cannot matter). ``check_retrainable`` asks, from the torch-free operator table
(``compressors.training.operators``), whether every operator that computes the scores
converts, so ``modelpress inspect`` can say so without loading torch. ``convert`` does the
conversion itself.
"""

from __future__ import annotations

import onnx

from compressors.errors import NotRetrainable
from compressors.onnx.graph import initializers, is_float_tensor, producers, shape_constant
from compressors.onnx.inspection import opset_of
from compressors.training.operators import has_converter

MAX_OPSET = 17  # the newest opset onnx2torch 1.5 converts by itself


def prepare(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` that onnx2torch can convert, with identical semantics."""
    prepared = onnx.ModelProto()
    prepared.CopyFrom(model)
    _hoist_constants(prepared.graph)
    _materialize_shared_weights(prepared.graph)
    _untie_copied_weights(prepared.graph)
    prepared = _down_convert_if_it_helps(prepared, opset_of(model))
    _relax_reshape_allowzero(prepared.graph)
    return prepared


def unconvertible_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes whose operator, at the model's own opset, has no converter in onnx2torch's
    registry (with this project's converters added)."""
    opsets = {o.domain or "": o.version for o in model.opset_import}
    return [
        node
        for node in model.graph.node
        if not has_converter(node.op_type, opsets.get(node.domain or "", MAX_OPSET), node.domain or "")
    ]


def _down_convert_if_it_helps(prepared: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """Bring the graph down to opset 17 only when some operator lacks a converter at its own
    opset and every one of them has a converter at 17; otherwise leave it (and let the check
    name the operator)."""
    missing = unconvertible_nodes(prepared)
    if opset <= MAX_OPSET or not missing:
        return prepared
    if not all(has_converter(node.op_type, MAX_OPSET, node.domain or "") for node in missing):
        return prepared
    try:
        return onnx.version_converter.convert_version(prepared, MAX_OPSET)
    except Exception as exc:
        raise NotRetrainable(
            f"the model's opset {opset} could not be brought down to {MAX_OPSET} for retraining "
            f"({_first_line(exc)}); use svd or prune, which need no retraining."
        ) from exc


def _hoist_constants(graph: onnx.GraphProto) -> None:
    """Float Constant nodes become initializers of the same name, so they can be trained."""
    keep = []
    for node in graph.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None and is_float_tensor(value):
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def _materialize_shared_weights(graph: onnx.GraphProto) -> None:
    """An Identity of a float initializer (the TorchScript exporter shares one tensor among
    layers whose weights were equal, e.g. zero biases) becomes an initializer of its own under
    the Identity's output name, so each layer trains its own copy; ``write_back`` gives the user's
    graph the same split only where the copies came to differ."""
    while True:
        inits = initializers(graph)
        shared = [
            n
            for n in graph.node
            if n.op_type == "Identity" and n.input[0] in inits and is_float_tensor(inits[n.input[0]])
        ]
        if not shared:
            return
        for node in shared:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            graph.initializer.append(copy)
            graph.node.remove(node)


# operators whose torch layer holds a copy of its weights (torch.nn.Conv2d, LayerNorm, ...):
# one initializer read by several of them would become several parameters
COPYING_OPS = frozenset(
    {"Conv", "ConvTranspose", "Gemm", "LayerNormalization", "BatchNormalization", "InstanceNormalization"}
)
UNTIED = "__untied_"


def untie_plan(graph: onnx.GraphProto) -> dict[str, tuple[str, str, int]]:
    """Per copy to make, (shared initializer, reading node's first output, input index): one
    for each reading of a float initializer by a ``COPYING_OPS`` node, when the initializer is
    read more than once.
    Exporters deduplicate equal initializers (every LayerNorm scale of ones becomes one tensor),
    and layers that were separate in the user's model must train separately."""
    inits = initializers(graph)
    readers: dict[str, list[tuple[int, int]]] = {}
    for index, node in enumerate(graph.node):
        for k, name in enumerate(node.input):
            if name in inits and is_float_tensor(inits[name]):
                readers.setdefault(name, []).append((index, k))
    plan = {}
    for name, reads in readers.items():
        if len(reads) < 2:
            continue
        copying = [(i, k) for i, k in reads if graph.node[i].op_type in COPYING_OPS]
        for n, (index, k) in enumerate(copying):
            plan[f"{name}{UNTIED}{n}"] = (name, graph.node[index].output[0], k)
    return plan


def _untie_copied_weights(graph: onnx.GraphProto) -> None:
    inits, made_by = initializers(graph), producers(graph)
    for copy_name, (name, reader, k) in untie_plan(graph).items():
        copy = onnx.TensorProto()
        copy.CopyFrom(inits[name])
        copy.name = copy_name
        graph.initializer.append(copy)
        made_by[reader].input[k] = copy_name


def user_untie_plan(model: onnx.ModelProto) -> dict[str, tuple[str, str, int]]:
    """``untie_plan`` of the graph ``prepare`` unties, read off the user's graph."""
    graph = onnx.GraphProto()
    graph.CopyFrom(model.graph)
    _hoist_constants(graph)
    _materialize_shared_weights(graph)
    return untie_plan(graph)


def _relax_reshape_allowzero(graph: onnx.GraphProto) -> None:
    """``allowzero`` only matters where the target shape holds a 0, and with allowzero=1 a 0
    in the target makes the output, hence the input, empty. Training never feeds empty
    batches, so on every tensor training sees the two settings give the same result; the
    user's graph keeps its own setting. Only a constant target holding a 0 (a Reshape that
    always empties its input) is left as it is, and refused."""
    inits, made_by = initializers(graph), producers(graph)
    for node in graph.node:
        if node.op_type != "Reshape":
            continue
        for attr in node.attribute:
            if attr.name == "allowzero" and attr.i == 1:
                shape = shape_constant(node.input[1], inits, made_by)
                if shape is None or not (shape == 0).any():
                    attr.i = 0


def check_retrainable(model: onnx.ModelProto, output: str | None = None) -> tuple[bool, str]:
    """(True, "") when every operator that computes the class scores (``output``, or the
    output ``compressors.onnx.outputs`` finds, read before a final Softmax) converts to torch;
    else (False, why), naming the operator and the node."""
    from compressors.errors import InvalidSpec
    from compressors.onnx.outputs import logits_of, score_output, up_to

    try:
        scored = logits_of(model, score_output(model, output))
    except InvalidSpec as exc:
        return False, exc.message
    return verdict(up_to(model, scored))


def verdict(model: onnx.ModelProto) -> tuple[bool, str]:
    try:
        prepared = prepare(model)
    except NotRetrainable as exc:
        return False, exc.message
    opsets = {o.domain or "": o.version for o in prepared.opset_import}
    for node in unconvertible_nodes(prepared)[:1]:
        domain = node.domain or ""
        where = f"{domain}::" if domain else ""
        at = f" at node {node.name!r}" if node.name else ""
        return (
            False,
            f"operator {where}{node.op_type} (opset {opsets.get(domain)}){at} has no torch converter",
        )
    for node in prepared.graph.node:
        if node.op_type == "Reshape" and any(a.name == "allowzero" and a.i for a in node.attribute):
            return False, "a Reshape with allowzero=1 has a constant target shape holding a 0"
    return True, ""


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:300]
