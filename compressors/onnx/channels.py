"""Removing whole output channels (neurons, filters) from an ONNX graph: the back half of group lasso.

Training with a group lasso penalty λ·Σ_g ‖W_g‖₂ over each layer's output groups (Wen et al.
2016, "Learning Structured Sparsity in Deep Neural Networks", eq. 2) drives whole groups to
zero; deleting them leaves smaller layers that are still dense. A group is
- Conv (group=1), weight Cout × Cin × k…: filter W[c] and bias entry b[c];
- Gemm: column j of B' (B after transB) and C[j];
- MatMul with a constant 2-D weight W (K × N): column W[:, j], and entry j of the bias when an
  Add right after it carries one (torch Linear on a 3-D input exports as MatMul + Add).

Channel c of a layer's output disappears from every tensor it flows into: through
channel-wise ops (activations, pooling, normalization, arithmetic with a per-channel constant,
whose constants are sliced too) and through a Flatten/Reshape to features, where channel c
is the S features c·S … (c+1)·S−1, down to the layers that read it, which lose the matching
input channels (Conv W[:, c], Gemm/MatMul weight rows). Where the tensor meets anything else,
another branch in an Add (a residual connection), a Concat, a graph output or an op that mixes
channels, the layer is *tied*: it is left whole and the reason reported.

Removal is exact when the removed channels reach the next layers as zeros: a zero filter with
zero bias followed by ReLU is. A BatchNormalization shift or an added constant after the
zero group is not, and removing the channel then drops that constant's contribution.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from compressors.errors import InvalidSpec
from compressors.onnx.graph import (
    MAC_OPS,
    Shape,
    attribute,
    constant_array,
    initializers,
    node_label,
    producers,
)
from compressors.onnx.layers import remove_unused

# Ops that act on each element alone: the channel axis passes through untouched.
_ELEMENTWISE = frozenset(
    {
        "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Gelu", "Elu", "Selu", "Celu", "HardSigmoid",
        "HardSwish", "Softplus", "Softsign", "Mish", "ThresholdedRelu", "Erf", "Abs", "Neg",
        "Exp", "Log", "Sqrt", "Reciprocal", "Cast", "Identity", "Dropout", "Clip",
    }
)  # fmt: skip
_POOLS = frozenset({"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})
# Normalizations with one parameter per channel (axis 1), at these input positions.
_NORMS = {"BatchNormalization": (1, 2, 3, 4), "InstanceNormalization": (1, 2)}
# Binary ops that stay channel-wise when the other operand is a constant (or the same channels).
_ARITHMETIC = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "PRelu"})
_REDUCTIONS = frozenset(
    {
        "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2",
        "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
    }
)  # fmt: skip


@dataclass
class ChannelRemoval:
    model: onnx.ModelProto  # a new model; the input is not modified
    removed: dict[str, int] = field(default_factory=dict)  # layer → output channels removed
    kept: dict[str, int] = field(default_factory=dict)  # layer → output channels kept
    tied: dict[str, str] = field(default_factory=dict)  # layer → why it was left whole


class _Tied(Exception):
    """Raised while tracing a layer's output: its channels cannot be removed, and why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class _Flow:
    """Where a layer's output channels lie in a tensor: along ``axis`` of a rank-``rank``
    tensor, each channel as ``block`` consecutive entries (more than one after a Flatten)."""

    axis: int
    rank: int
    block: int = 1


@dataclass(frozen=True)
class _Cut:
    """Slice constant input ``slot`` of node ``node`` along ``axis`` by the kept channels."""

    node: int
    slot: int
    axis: int
    block: int = 1


@dataclass
class _Plan:
    """Everything removing one layer's channels touches, found on the original graph."""

    layer: int  # node index
    channels: int
    groups: list[_Cut]  # the layer's own weight and bias: the group lasso groups
    cuts: list[_Cut] = field(default_factory=list)  # constants downstream
    targets: list[tuple[int, int]] = field(default_factory=list)  # (Reshape node, position) to rescale
    region: set[str] = field(default_factory=set)  # tensors whose width changes


@dataclass
class _Graph:
    """The original graph, indexed for tracing."""

    nodes: list[onnx.NodeProto]
    inits: dict[str, onnx.TensorProto]
    made_by: dict[str, onnx.NodeProto]
    readers: dict[str, list[tuple[int, int]]]  # tensor → (node, input position)
    uses: Counter[str]  # references by node inputs, subgraphs and graph outputs
    outputs: set[str]
    nested: set[str]  # names read inside If/Loop/Scan bodies
    shapes: Mapping[str, Shape]

    def constant(self, name: str) -> np.ndarray | None:
        return constant_array(name, self.inits, self.made_by) if name else None

    def label(self, index: int) -> str:
        node = self.nodes[index]
        return f"{node.op_type} '{node_label(node, index)}'"


def group_norms(
    model: onnx.ModelProto,
    layer_names: Iterable[str] | None = None,
    affines: Mapping[str, list[str]] | None = None,
) -> dict[str, np.ndarray]:
    """Per layer with output groups (all of them, or those named): the L2 norm of each output
    neuron/filter's weights and bias, i.e. the groups group lasso penalizes, together with the
    per-channel tensors ``affines`` names for it (see ``channel_affines``). Zero entries are
    the channels training has switched off; keep ``np.flatnonzero(norms > tol)``."""
    g = _index(model, {})
    labels = _labels(g)
    wanted = list(labels) if layer_names is None else list(layer_names)
    norms: dict[str, np.ndarray] = {}
    for name in wanted:
        if name not in labels:
            raise InvalidSpec(f"there is no layer named '{name}'; layer names are those inspect reports.")
        try:
            groups, channels = _groups(g, labels[name])
        except _Tied as tied:
            if layer_names is None:
                continue
            raise InvalidSpec(f"layer '{name}' has no output groups to measure: {tied.reason}.") from None
        norms[name] = _norms(g, groups, channels)
        for tensor in (affines or {}).get(name, []):
            value = g.constant(tensor)
            if value is not None and value.size == channels:
                norms[name] = np.sqrt(norms[name] ** 2 + np.square(value.astype(np.float64).reshape(-1)))
    return norms


def channel_affines(model: onnx.ModelProto, shapes: Mapping[str, Shape]) -> dict[str, list[str]]:
    """Per removable layer: the per-channel scale and shift of every normalization its channels
    pass through (BatchNormalization, InstanceNormalization). They belong in the layer's groups:
    after a normalization a zero filter is not a zero channel (the output is the shift, and
    the filter's scale no longer matters), so a channel is off only when they are zero too."""
    g = _index(model, shapes)
    found: dict[str, list[str]] = {}
    for name, index in _labels(g).items():
        try:
            plan = _trace(g, index)
        except _Tied:
            continue
        found[name] = [
            g.nodes[cut.node].input[cut.slot]
            for cut in plan.cuts
            if g.nodes[cut.node].op_type in _NORMS and cut.slot in (1, 2)
        ]
    return found


def prunable_layers(model: onnx.ModelProto, shapes: Mapping[str, Shape]) -> dict[str, str | None]:
    """Every Conv/ConvTranspose/Gemm/MatMul layer: None when its output channels can be removed,
    else the reason they cannot. ``shapes`` are static shapes (``analysis_shapes``)."""
    g = _index(model, shapes)
    verdicts: dict[str, str | None] = {}
    for name, index in _labels(g).items():
        try:
            _trace(g, index)
            verdicts[name] = None
        except _Tied as tied:
            verdicts[name] = tied.reason
    return verdicts


def remove_channels(
    model: onnx.ModelProto,
    keep: Mapping[str, np.ndarray | list[int]],
    shapes: Mapping[str, Shape] | None = None,
) -> ChannelRemoval:
    """Keep only the listed output channels of each named layer, and the matching input
    channels of whatever reads them; returns a new model.

    ``keep`` maps a layer name to the indices of the channels to keep; an empty list keeps the
    one with the largest group norm, so that no layer vanishes. Layers whose channels cannot
    be removed are left whole and listed in ``tied``. ``shapes`` default to ``analysis_shapes``.
    """
    if shapes is None:
        from compressors.onnx.inspection import analysis_shapes

        shapes = analysis_shapes(model)[0]
    g = _index(model, shapes)
    labels = _labels(g)
    unknown = sorted(set(keep) - set(labels))
    if unknown:
        raise InvalidSpec(f"there is no layer named '{unknown[0]}'; layer names are those inspect reports.")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    result = ChannelRemoval(out)
    arrays: dict[tuple[int, int], np.ndarray] = {}
    region: set[str] = set()
    for name, wanted in keep.items():
        try:
            plan = _trace(g, labels[name])
        except _Tied as tied:
            result.tied[name] = tied.reason
            continue
        chosen = _chosen(name, wanted, plan, g)
        result.removed[name] = plan.channels - len(chosen)
        result.kept[name] = len(chosen)
        if len(chosen) < plan.channels:
            _apply(plan, chosen, g, arrays)
            region |= plan.region
    _write(out.graph, g, arrays, region)
    remove_unused(out.graph)
    return result


def _index(model: onnx.ModelProto, shapes: Mapping[str, Shape]) -> _Graph:
    graph = model.graph
    readers: dict[str, list[tuple[int, int]]] = defaultdict(list)
    uses: Counter[str] = Counter()
    for index, node in enumerate(graph.node):
        for slot, name in enumerate(node.input):
            if name:
                readers[name].append((index, slot))
                uses[name] += 1
    nested = _nested_reads(graph)
    outputs = {o.name for o in graph.output}
    uses.update(nested | outputs)
    return _Graph(
        list(graph.node), initializers(graph), producers(graph), readers, uses, outputs, nested, shapes
    )


def _nested_reads(graph: onnx.GraphProto) -> set[str]:
    """Names read by nodes inside the subgraphs of ``graph``'s nodes (outer-scope reads
    do not appear among the If/Loop node's own inputs)."""
    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                names |= {name for inner in sub.node for name in inner.input} | _nested_reads(sub)
    return names


def _labels(g: _Graph) -> dict[str, int]:
    return {node_label(node, i): i for i, node in enumerate(g.nodes) if node.op_type in MAC_OPS}


def _groups(g: _Graph, index: int) -> tuple[list[_Cut], int]:
    """The layer's output groups as cuts on its own weight and bias, and how many there are."""
    node = g.nodes[index]
    op = node.op_type
    if op == "ConvTranspose":
        raise _Tied("ConvTranspose layers are not pruned")
    if len(node.input) < 2:
        raise _Tied("it has no weight input")
    weight = _owned(g, node.input[1], "its weight")
    if op == "Conv":
        group = int(attribute(node, "group", 1))
        if group != 1:
            raise _Tied(f"grouped/depthwise convolution (group={group}) is left alone")
        cuts, channels = [_Cut(index, 1, 0)], int(weight.shape[0])
    else:
        if weight.ndim != 2:
            raise _Tied("its weight is not a 2-D matrix")
        trans_b = op == "Gemm" and attribute(node, "transB", 0)
        cuts, channels = [_Cut(index, 1, 0 if trans_b else 1)], int(weight.shape[0 if trans_b else 1])
    if op == "MatMul":
        cuts += _following_bias(g, index, channels)
    elif len(node.input) > 2 and node.input[2]:
        bias = _owned(g, node.input[2], "its bias")
        # a Conv bias is (Cout,); a Gemm C broadcasts against the (M, N) output
        axis = 0 if op == "Conv" else _broadcast_axis(bias.shape, _Flow(1, 2), channels)
        if axis is not None:
            cuts.append(_Cut(index, 2, axis))
    return cuts, channels


def _following_bias(g: _Graph, index: int, channels: int) -> list[_Cut]:
    """The bias of a MatMul that exporters write as MatMul + Add (torch Linear on a 3-D input):
    the per-channel constant of the Add that alone reads its output, part of each group."""
    readers = g.readers.get(g.nodes[index].output[0], [])
    if len(readers) != 1 or g.nodes[readers[0][0]].op_type != "Add":
        return []
    add, slot = readers[0]
    bias = g.constant(g.nodes[add].input[1 - slot])
    if bias is None or len(bias.shape) == 0 or bias.shape[-1] != channels or channels == 1:
        return []
    return [_Cut(add, 1 - slot, bias.ndim - 1)]


def _owned(g: _Graph, name: str, what: str) -> np.ndarray:
    """The constant value of a weight this node alone reads (slicing it must not touch another)."""
    value = g.constant(name)
    if value is None:
        raise _Tied(f"{what} is computed at run time, not stored in the model")
    if g.uses[name] > 1:
        raise _Tied(f"{what} is shared with other nodes")
    return value


def _norms(g: _Graph, groups: list[_Cut], channels: int) -> np.ndarray:
    squares = np.zeros(channels, dtype=np.float64)
    for cut in groups:
        value = g.constant(g.nodes[cut.node].input[cut.slot])
        assert value is not None  # _groups checked every group tensor is a constant
        moved = np.moveaxis(value.astype(np.float64), cut.axis, 0)
        squares += np.square(moved.reshape(channels, -1)).sum(axis=1)
    return np.sqrt(squares)


def _broadcast_axis(shape: Shape, flow: _Flow, width: int) -> int | None:
    """The axis of a constant operand that lines up with the channels under numpy-style
    broadcasting, or None when the constant is the same for every channel."""
    axis = len(shape) - (flow.rank - flow.axis)  # both aligned from the last axis
    if axis < 0 or shape[axis] == 1:
        return None
    if shape[axis] != width:
        raise _Tied(f"a constant of shape {list(shape)} does not line up with its {width} channels")
    return axis


def _output_flow(g: _Graph, index: int) -> _Flow:
    node = g.nodes[index]
    if node.op_type == "Conv":
        weight = g.constant(node.input[1])
        assert weight is not None
        return _Flow(1, weight.ndim)
    if node.op_type == "Gemm":
        return _Flow(1, 2)
    shape = g.shapes.get(node.output[0]) or g.shapes.get(node.input[0])
    if shape is None:
        raise _Tied("the rank of its output could not be determined")
    return _Flow(len(shape) - 1, len(shape))


def _trace(g: _Graph, index: int) -> _Plan:
    """Follow the layer's output through channel-wise ops to the layers that read it."""
    groups, channels = _groups(g, index)
    plan = _Plan(index, channels, groups)
    start = g.nodes[index].output[0]
    reached = {start: _output_flow(g, index)}
    queue = [start]
    partners: list[tuple[str, _Flow, int]] = []  # other operands that must carry the same channels
    done: set[tuple[int, int]] = set()
    while queue:
        name = queue.pop()
        flow = reached[name]
        if name in g.outputs:
            raise _Tied(f"its output reaches the graph output '{name}', whose width must not change")
        if name in g.nested:
            raise _Tied("its output is read inside a subgraph (If/Loop/Scan)")
        for reader, slot in g.readers.get(name, []):
            if (reader, slot) in done:
                continue
            done.add((reader, slot))
            step = _step(g, plan, reader, slot, flow, partners)
            if step is None:
                continue
            after, after_flow = step
            if after in reached:
                if reached[after] != after_flow:
                    raise _Tied(f"its channels reach {g.label(reader)} along two different axes")
                continue
            reached[after] = after_flow
            queue.append(after)
    for other, flow, reader in partners:
        if reached.get(other) != flow:
            raise _Tied(f"its output meets another branch in {g.label(reader)} (a residual connection)")
    plan.region = set(reached)
    return plan


def _step(
    g: _Graph, plan: _Plan, index: int, slot: int, flow: _Flow, partners: list[tuple[str, _Flow, int]]
) -> tuple[str, _Flow] | None:
    """One node on the path: record what to slice there and return its output and where the
    channels lie in it, or None when the node is a layer whose input channels shrink."""
    node = g.nodes[index]
    op, label = node.op_type, g.label(index)
    if node.domain not in ("", "ai.onnx"):
        raise _Tied(f"its output reaches {label} of domain '{node.domain}', which removal does not follow")
    if op in ("Conv", "Gemm", "MatMul") and slot == 0:
        _shrink_input(g, plan, index, flow)
        return None
    if op == "Concat":
        raise _Tied(f"its output meets another branch in {label}")
    if slot != 0 and op not in _ARITHMETIC - {"PRelu"}:
        raise _Tied(f"its output is a parameter of {label}, not its data")
    if op in _ARITHMETIC:
        return _arithmetic(g, plan, index, slot, flow, partners)
    if op in _ELEMENTWISE:
        return _single_output(g, index), flow
    if op in _POOLS or op in _NORMS:
        if flow.axis != 1 or flow.block != 1:
            raise _Tied(f"its channels are not on axis 1 where they reach {label}")
        for position in _NORMS.get(op, ()):
            if g.constant(node.input[position]) is None:
                raise _Tied(f"the parameters of {label} are computed at run time")
            plan.cuts.append(_Cut(index, position, 0))
        return _single_output(g, index), flow
    if op == "Flatten":
        return _flatten(g, index, flow)
    if op == "Reshape":
        return _reshape(g, plan, index, flow)
    if op in _REDUCTIONS:
        return _reduction(g, index, flow)
    if op in ("Softmax", "LogSoftmax", "Hardmax", "LayerNormalization", "LRN", "GroupNormalization"):
        raise _Tied(f"its output reaches {label}, which mixes channels")
    raise _Tied(f"its output reaches {label}, which channel removal does not follow")


def _single_output(g: _Graph, index: int) -> str:
    """Output 0, refusing nodes whose secondary outputs (a Dropout mask, MaxPool indices,
    BatchNormalization running statistics) are read, since those would change width too."""
    node = g.nodes[index]
    for extra in node.output[1:]:
        if extra and (extra in g.readers or extra in g.outputs):
            raise _Tied(f"a second output of {g.label(index)} is used")
    return node.output[0]


def _arithmetic(
    g: _Graph, plan: _Plan, index: int, slot: int, flow: _Flow, partners: list[tuple[str, _Flow, int]]
) -> tuple[str, _Flow]:
    node = g.nodes[index]
    other = node.input[1 - slot]
    value = g.constant(other)
    if value is None:
        if node.op_type == "PRelu":
            raise _Tied(f"the slope of {g.label(index)} is computed at run time")
        if other not in _downstream(g, g.nodes[plan.layer].output[0]):
            raise _Tied(f"its output meets another branch in {g.label(index)} (a residual connection)")
        # fine when the other operand carries the same channels (x * sigmoid(x)); checked at the end
        partners.append((other, flow, index))
        return node.output[0], flow
    axis = _broadcast_axis(value.shape, flow, plan.channels * flow.block)
    if axis is not None:
        plan.cuts.append(_Cut(index, 1 - slot, axis, flow.block))
    rank = max(flow.rank, value.ndim)
    return node.output[0], _Flow(flow.axis + rank - flow.rank, rank, flow.block)


def _downstream(g: _Graph, start: str) -> set[str]:
    """Every tensor computed from ``start``."""
    found, queue = {start}, [start]
    while queue:
        for reader, _ in g.readers.get(queue.pop(), []):
            for name in g.nodes[reader].output:
                if name and name not in found:
                    found.add(name)
                    queue.append(name)
    return found


def _flatten(g: _Graph, index: int, flow: _Flow) -> tuple[str, _Flow]:
    """Flatten at the channel axis: channel c becomes the S features c·S … (c+1)·S−1."""
    node = g.nodes[index]
    axis = int(attribute(node, "axis", 1))
    if axis < 0:
        axis += flow.rank
    if axis != flow.axis:
        raise _Tied(f"{g.label(index)} does not start at the channel axis")
    return node.output[0], _Flow(1, 2, flow.block * _inner_size(g, node.input[0], flow))


def _inner_size(g: _Graph, name: str, flow: _Flow) -> int:
    """Elements per channel in the axes after the channel axis."""
    if flow.axis == flow.rank - 1:
        return 1
    shape = g.shapes.get(name)
    if shape is None or len(shape) != flow.rank:
        raise _Tied(f"the shape of '{name}' could not be determined")
    return int(np.prod(shape[flow.axis + 1 :]))


def _reshape(g: _Graph, plan: _Plan, index: int, flow: _Flow) -> tuple[str, _Flow]:
    """A Reshape that merges the channel axis with all the axes after it, as a Flatten does.
    An explicit width in its constant target (N, C·H·W) is rescaled; -1 and 0 are left."""
    node = g.nodes[index]
    label = g.label(index)
    target = g.constant(node.input[1])
    if target is None:
        raise _Tied(f"{label} takes a target shape computed at run time")
    before, after = g.shapes.get(node.input[0]), g.shapes.get(node.output[0])
    if before is None or after is None:
        raise _Tied(f"the shapes around {label} could not be determined")
    p = flow.axis
    flattens = (
        len(before) == flow.rank
        and len(after) == p + 1
        and tuple(after[:p]) == tuple(before[:p])
        and after[p] == int(np.prod(before[p:]))
    )
    if not flattens:
        raise _Tied(f"{label} does more than flatten the channel axis with the axes after it")
    if target[p] > 0:
        plan.targets.append((index, p))
    return node.output[0], _Flow(p, p + 1, flow.block * _inner_size(g, node.input[0], flow))


def _reduction(g: _Graph, index: int, flow: _Flow) -> tuple[str, _Flow]:
    """A reduction over other axes (a spatial mean) keeps each channel separate."""
    node = g.nodes[index]
    label = g.label(index)
    axes = attribute(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = g.constant(node.input[1])
        if value is None:
            raise _Tied(f"{label} reduces over axes computed at run time")
        axes = value.tolist()
    if not axes:
        if attribute(node, "noop_with_empty_axes", 0):
            return node.output[0], flow
        axes = list(range(flow.rank))
    axes = sorted({int(a) % flow.rank for a in axes})
    if flow.axis in axes:
        raise _Tied(f"{label} reduces over the channel axis")
    if attribute(node, "keepdims", 1):
        return node.output[0], flow
    before = sum(a < flow.axis for a in axes)
    return node.output[0], _Flow(flow.axis - before, flow.rank - len(axes), flow.block)


def _shrink_input(g: _Graph, plan: _Plan, index: int, flow: _Flow) -> None:
    """A layer reading the channels: drop the matching input channels of its weight."""
    node = g.nodes[index]
    op, label = node.op_type, g.label(index)
    if len(node.input) < 2:
        raise _Tied(f"it feeds {label}, which has no weight")
    weight = _owned(g, node.input[1], f"the weight of {label} it feeds")
    if op == "Conv":
        group = int(attribute(node, "group", 1))
        if group != 1:
            raise _Tied(f"it feeds grouped convolution {label} (group={group})")
        if (flow.axis, flow.rank, flow.block) != (1, weight.ndim, 1):
            raise _Tied(f"its channels are not the input channels of {label}")
        plan.cuts.append(_Cut(index, 1, 1))
        return
    if weight.ndim != 2:
        raise _Tied(f"it feeds {label}, whose weight is not a 2-D matrix")
    if op == "Gemm" and attribute(node, "transA", 0):
        raise _Tied(f"it feeds {label} with transA=1")
    if flow.axis != flow.rank - 1:
        raise _Tied(f"its channels are not the input features of {label}")
    trans_b = op == "Gemm" and attribute(node, "transB", 0)
    plan.cuts.append(_Cut(index, 1, 1 if trans_b else 0, flow.block))


def _chosen(name: str, wanted: np.ndarray | list[int], plan: _Plan, g: _Graph) -> np.ndarray:
    """The sorted, unique channels to keep; the strongest group when none is asked for."""
    indices = np.asarray(wanted)
    if indices.size == 0:
        return np.array([int(np.argmax(_norms(g, plan.groups, plan.channels)))])
    if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
        raise InvalidSpec(
            f"keep['{name}'] must list channel indices (for a mask, pass np.flatnonzero(mask))."
        )
    chosen = np.unique(indices).astype(np.int64)
    if chosen[0] < 0 or chosen[-1] >= plan.channels:
        bad = chosen[0] if chosen[0] < 0 else chosen[-1]
        raise InvalidSpec(
            f"keep['{name}'] names channel {bad}, but the layer has channels 0 to {plan.channels - 1}."
        )
    return chosen


def _apply(plan: _Plan, chosen: np.ndarray, g: _Graph, arrays: dict[tuple[int, int], np.ndarray]) -> None:
    """Slice the plan's constants into ``arrays`` (keyed by node and input position), on top
    of what earlier plans did: a middle layer loses input rows to one plan, columns to another."""
    for cut in dict.fromkeys([*plan.groups, *plan.cuts]):  # a MatMul's Add bias is in both
        key = (cut.node, cut.slot)
        value = arrays[key] if key in arrays else g.constant(g.nodes[cut.node].input[cut.slot])
        assert value is not None  # tracing checked every cut is a constant
        entries = (chosen[:, None] * cut.block + np.arange(cut.block)).ravel()
        arrays[key] = np.take(value, entries, axis=cut.axis)
    for node, position in plan.targets:
        key = (node, 1)
        value = arrays[key] if key in arrays else g.constant(g.nodes[node].input[1])
        assert value is not None
        value = value.copy()
        value[position] = value[position] // plan.channels * len(chosen)
        arrays[key] = value


def _write(
    graph: onnx.GraphProto, g: _Graph, arrays: Mapping[tuple[int, int], np.ndarray], region: set[str]
) -> None:
    """Store the sliced constants: in place when only that node reads the initializer, else
    as a new initializer (the old one, or its Transpose, goes with remove_unused)."""
    stored = {t.name: t for t in graph.initializer}
    taken = set(stored) | {o for node in graph.node for o in node.output}
    listed = {v.name for v in graph.input}
    stale = set(region)
    for (index, slot), value in arrays.items():
        node = graph.node[index]
        name = node.input[slot]
        stale.add(name)
        if name in stored and g.uses[name] == 1 and name not in listed:
            stored[name].CopyFrom(numpy_helper.from_array(value, name))
            continue
        fresh = f"{name}.kept"
        while fresh in taken:
            fresh += "_"
        taken.add(fresh)
        graph.initializer.append(numpy_helper.from_array(value, fresh))
        node.input[slot] = fresh
    # recorded shapes of changed tensors would contradict the new widths
    kept_info = [v for v in graph.value_info if v.name not in stale]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
