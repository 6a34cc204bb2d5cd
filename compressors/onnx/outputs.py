"""Which output holds the class scores, and the part of the graph that computes it.

Exported classifiers often have more than one output: scikit-learn through skl2onnx writes
the predicted ``label`` (int64) first and the ``probabilities`` second, or a ZipMap (a list
of dicts) in their place. Accuracy, fidelity and training read one floating-point tensor:
the output named by the job (``training.output``), or by default the first floating-point
graph output whose last dimension can hold the classes. A ZipMap output stands for the
tensor it is made from. Training reads the scores before a final Softmax (its logits),
when there is one, so cross-entropy sees logits; the artifact keeps every output.
"""

from __future__ import annotations

import onnx

from compressors.errors import InvalidSpec
from compressors.onnx.graph import attribute, producers

FLOAT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
}


def _float_outputs(model: onnx.ModelProto) -> list[tuple[str, list[int | str]]]:
    """(tensor, shape) of each graph output that is, or stands for, a float tensor."""
    made_by = producers(model.graph)
    found: list[tuple[str, list[int | str]]] = []
    for value in model.graph.output:
        name = value.name
        if name in made_by and made_by[name].op_type == "ZipMap":
            found.append((made_by[name].input[0], []))
            continue
        tensor = value.type.tensor_type
        if value.type.HasField("tensor_type") and tensor.elem_type in FLOAT_TYPES:
            dims = [
                d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim
            ]
            found.append((name, dims))
    return found


def score_output(model: onnx.ModelProto, name: str | None = None, classes: int | None = None) -> str:
    """The tensor that holds the class scores: ``name`` when given (a graph output, or the
    input of a ZipMap output), else the first float output whose last dimension fits
    ``classes`` (any, when unknown)."""
    candidates = _float_outputs(model)
    names = [value.name for value in model.graph.output]
    if name is not None:
        made_by = producers(model.graph)
        if name in made_by and made_by[name].op_type == "ZipMap":
            return made_by[name].input[0]
        if name in names or name in {tensor for tensor, _ in candidates}:
            if name in names and name not in {tensor for tensor, _ in candidates}:
                raise InvalidSpec(
                    f"the output {name!r} is not a floating-point tensor; choose one of {names}."
                )
            return name
        raise InvalidSpec(f"the model has no output named {name!r}; its outputs are {names}.")
    for tensor, dims in candidates:
        last = dims[-1] if dims else None
        if classes is None or not isinstance(last, int) or last >= classes:
            return tensor
    if candidates:
        return candidates[0][0]
    raise InvalidSpec(f"none of the model's outputs {names} is a floating-point tensor to score or train.")


def logits_of(model: onnx.ModelProto, output: str) -> str:
    """The tensor training reads for ``output``: the input of a final Softmax on the last axis."""
    made_by = producers(model.graph)
    node = made_by.get(output)
    if (
        node is not None
        and node.op_type == "Softmax"
        and int(attribute(node, "axis", -1)) in (-1, _rank(model, output) - 1)
    ):
        return node.input[0]
    return output


def _rank(model: onnx.ModelProto, tensor: str) -> int:
    for value in [*model.graph.output, *model.graph.value_info]:
        if value.name == tensor and value.type.HasField("tensor_type"):
            return len(value.type.tensor_type.shape.dim)
    return -99


def up_to(model: onnx.ModelProto, output: str) -> onnx.ModelProto:
    """The part of ``model`` that computes ``output`` alone (the whole model when that is
    already its only output): the same inputs, nodes and weights, one output."""
    if [value.name for value in model.graph.output] == [output]:
        return model
    kept_nodes, needed = [], {output}
    for node in reversed(model.graph.node):
        if any(out in needed for out in node.output):
            kept_nodes.append(node)
            needed.update(i for i in node.input if i)
            for attr in node.attribute:  # outer names read inside subgraphs
                if attr.HasField("g"):
                    needed.update(i for n in attr.g.node for i in n.input)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    del graph.node[:]
    graph.node.extend(reversed(kept_nodes))
    kept_inits = [t for t in model.graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    result = _typed(model, output)
    del graph.output[:]
    graph.output.append(result)
    return out


def _typed(model: onnx.ModelProto, tensor: str) -> onnx.ValueInfoProto:
    """``tensor``'s declared type, from the graph or from shape inference."""
    typed = {v.name: v for v in [*model.graph.output, *model.graph.value_info]}
    if tensor not in typed:
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
            typed = {v.name: v for v in inferred.graph.value_info}
        except Exception:  # an unknown domain or a huge model: the type is assumed below
            typed = {}
    found = typed.get(tensor)
    if found is not None and found.type.HasField("tensor_type"):
        return found
    return onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None)
