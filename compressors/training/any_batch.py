"""Training a model exported with a fixed batch at any batch size.

``torch.onnx.export(model, torch.randn(1, 3, H, W))`` bakes the batch of 1 into the graph: into
the input shape, and into every constant that carries it, such as the ``[1, 512]`` target of the
Reshape in front of a classifier. Training feeds 64 samples at a time, so such a graph fails
inside torch. For training only (the artifact keeps the user's graph and batch), a copy of the
graph is made batch-free:

- graph inputs and outputs get a symbolic leading dimension;
- a Reshape of a batch-carrying tensor to a constant target gets the target it resolves to at
  the exported batch, with ``-1`` in the leading place (the batch stays the outer axis);
- an Expand of a batch-carrying tensor keeps its batch (target ``1`` there); an Expand of a
  batch-free tensor to the exported batch (``x.expand(batch, ...)`` in the source) expands to
  the run-time batch instead;
- a batch-free tensor concatenated with batch-carrying ones along another axis (a class
  token in a ViT) is expanded to the run-time batch first.

These rules follow how exporters write batch-major models, not a proof, so the converted module
is checked against onnxruntime on the user's own graph before it is used
(``outputs_agree``). When the check fails — the batch sits elsewhere, or a constant index
selects rows — training runs the user's graph as it is, a fixed-size chunk at a time
(``FixedBatch``): slower, and always right.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from compressors.errors import NotRetrainable
from compressors.onnx.graph import (
    graph_inputs,
    infer_static_shapes,
    initializers,
    probe_shapes,
    producers,
    shape_constant,
)

BATCH_DIM = "batch"
BATCH_FREE_OPS = frozenset({"Shape", "Size"})  # their outputs describe a tensor, they do not hold rows


def has_only_batch_fixed(model: onnx.ModelProto) -> bool:
    """Every input dimension after the first is a number (so shapes at the exported batch are
    the shapes at every batch, but for the batch itself)."""
    for value in graph_inputs(model):
        dims = value.type.tensor_type.shape.dim
        if any(not (d.HasField("dim_value") and d.dim_value > 0) for d in dims[1:]):
            return False
    return True


def symbolic_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """A copy of ``model`` (fixed at ``batch``) whose batch dimension is free; see the module doc."""
    shapes = _shapes_at(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    for value in [*graph_inputs(out), *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value == batch:
            dims[0].dim_param = BATCH_DIM
    del graph.value_info[:]
    rewriter = _Rewriter(graph, shapes, batch)
    rewriter.run()
    return out


def _shapes_at(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Static shapes at the exported batch of the tensors the rules look at."""
    inputs = {
        v.name: tuple(int(d.dim_value) for d in v.type.tensor_type.shape.dim) for v in graph_inputs(model)
    }
    known = infer_static_shapes(model, inputs)
    wanted = [
        name
        for node in model.graph.node
        if node.op_type in ("Reshape", "Expand", "Concat")
        for name in (*node.input[:1], *(node.input if node.op_type == "Concat" else ()), node.output[0])
        if name and name not in known
    ]
    if wanted:
        known.update(probe_shapes(model, inputs, list(dict.fromkeys(wanted))))
    return known


class _Rewriter:
    """One pass over the graph in order, tracking which tensors carry the batch (those computed
    from the inputs, but for shape queries) and applying the rules to the nodes that need them."""

    def __init__(self, graph: onnx.GraphProto, shapes: dict[str, tuple[int, ...]], batch: int) -> None:
        self.graph, self.shapes, self.batch = graph, shapes, batch
        self.inits, self.made_by = initializers(graph), producers(graph)
        self.batched = {v.name for v in graph.input if v.name not in self.inits}
        self.head: list[onnx.NodeProto] = []  # computes the run-time batch, before everything
        self.nodes: list[onnx.NodeProto] = []
        self.count = 0
        self._batch_vector: str | None = None

    def run(self) -> None:
        rules = {"Reshape": self._reshape, "Expand": self._expand, "Concat": self._concat}
        for node in list(self.graph.node):
            rule = rules.get(node.op_type)
            if rule is not None:
                rule(node)
            self.nodes.append(node)
            if node.op_type not in BATCH_FREE_OPS and any(i in self.batched for i in node.input):
                self.batched.update(node.output)
        del self.graph.node[:]
        self.graph.node.extend([*self.head, *self.nodes])

    def _name(self, kind: str) -> str:
        self.count += 1
        return f"any_batch/{kind}_{self.count}"

    def _constant(self, values: list[int]) -> str:
        name = self._name("shape")
        self.graph.initializer.append(numpy_helper.from_array(np.array(values, dtype=np.int64), name))
        return name

    def _node(self, op: str, inputs: list[str], **attrs: Any) -> str:
        out = self._name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def batch_vector(self) -> str:
        """A 1-D tensor [N] holding the run-time batch, read off the first graph input."""
        if self._batch_vector is None:
            first = next(v.name for v in self.graph.input if v.name not in self.inits)
            shape, index = self._name("shape_of_input"), self._constant([0])
            self._batch_vector = self._name("batch")
            self.head.append(helper.make_node("Shape", [first], [shape], name=shape))
            self.head.append(helper.make_node("Gather", [shape, index], [self._batch_vector], axis=0))
        return self._batch_vector

    def _target(self, node: onnx.NodeProto) -> list[int] | None:
        value = shape_constant(node.input[1], self.inits, self.made_by) if len(node.input) > 1 else None
        return None if value is None or value.ndim != 1 else [int(v) for v in value]

    def _reshape(self, node: onnx.NodeProto) -> None:
        target, out = self._target(node), self.shapes.get(node.output[0])
        if node.input[0] not in self.batched or target is None or not out:
            return
        free = [-1, *out[1:]]  # the batch stays the outer axis, every other size as exported
        if free != target:
            node.input[1] = self._constant(free)
            for attr in node.attribute:
                if attr.name == "allowzero":
                    attr.i = 0

    def _expand(self, node: onnx.NodeProto) -> None:
        target = self._target(node)
        if target is None or not target or target[0] != self.batch:
            return
        if node.input[0] in self.batched:
            if self.batch != 1:
                node.input[1] = self._constant([1, *target[1:]])
            return
        rest = self._constant(target[1:])
        node.input[1] = self._node("Concat", [self.batch_vector(), rest], axis=0)
        self.batched.update(node.output)

    def _concat(self, node: onnx.NodeProto) -> None:
        carried = [i for i in node.input if i in self.batched]
        if not carried or len(carried) == len(node.input) or carried[0] not in self.shapes:
            return
        rank = len(self.shapes[carried[0]])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0) % max(rank, 1)
        if axis == 0:
            return
        for k, name in enumerate(node.input):
            shape = self.shapes.get(name)
            if name in self.batched or shape is None or len(shape) != rank or shape[0] != self.batch:
                continue
            ones = self._constant([1] * (rank - 1))
            target = self._node("Concat", [self.batch_vector(), ones], axis=0)
            node.input[k] = self._node("Expand", [name, target])


class FixedBatch(nn.Module):
    """Runs a module that only accepts ``batch`` rows on any number of rows: chunk by chunk, the
    last chunk padded with copies of its last row, whose outputs are dropped. Exact whenever
    rows do not interact, which holds in eval mode (normalization layers use stored statistics)."""

    def __init__(self, inner: nn.Module, batch: int) -> None:
        super().__init__()
        self.inner, self.batch = inner, batch

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        rows = inputs[0].shape[0]
        pieces: list[list[torch.Tensor]] = []
        for start in range(0, rows, self.batch):
            chunk = [x[start : start + self.batch] for x in inputs]
            real = chunk[0].shape[0]
            if real < self.batch:
                chunk = [torch.cat([c, c[-1:].expand(self.batch - real, *c.shape[1:])]) for c in chunk]
            out = self.inner(*chunk)
            outs = out if isinstance(out, tuple | list) else (out,)
            if any(o.dim() == 0 or o.shape[0] != self.batch for o in outs):
                raise NotRetrainable(
                    f"the model's batch is fixed at {self.batch} and its outputs do not keep one row per "
                    "sample, so it cannot be trained on other batch sizes; export it with a dynamic batch."
                )
            pieces.append([o[:real] for o in outs])
        joined = tuple(torch.cat(parts) for parts in zip(*pieces, strict=True))
        return joined[0] if len(joined) == 1 else joined


def sample_feeds(model: onnx.ModelProto, rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of every graph input's dtype, ``rows`` of them: normal floats, and 0/1 for
    integers (a valid token id and mask value for any vocabulary)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in graph_inputs(model):
        dims = [int(d.dim_value) for d in value.type.tensor_type.shape.dim[1:]]
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal((rows, *dims)).astype(dtype)
        else:
            feeds[value.name] = rng.integers(0, 2, size=(rows, *dims)).astype(dtype)
    return feeds


def _reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray], batch: int) -> list[np.ndarray]:
    """The user's graph on ``feeds``, ``batch`` rows at a time (the last chunk padded)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rows = len(next(iter(feeds.values())))
    pieces = []
    for start in range(0, rows, batch):
        chunk = {k: v[start : start + batch] for k, v in feeds.items()}
        real = len(next(iter(chunk.values())))
        chunk = {k: np.concatenate([v, np.repeat(v[-1:], batch - real, axis=0)]) for k, v in chunk.items()}
        pieces.append([o[:real] for o in session.run(None, chunk)])
    return [np.concatenate(parts) for parts in zip(*pieces, strict=True)]


@torch.no_grad()
def outputs_agree(module: nn.Module, model: onnx.ModelProto, batch: int) -> bool:
    """Whether ``module`` fed 2·batch+1 rows at once computes what the user's graph computes on
    them ``batch`` at a time (every floating-point output, to float32 rounding)."""
    feeds = sample_feeds(model, 2 * batch + 1)
    expected = _reference(model, feeds, batch)
    module.eval()
    try:
        got = module(*[torch.from_numpy(v) for v in feeds.values()])
    except Exception:  # any failure at another batch size means the rules did not hold
        return False
    outputs = [t.detach().numpy() for t in (got if isinstance(got, tuple | list) else (got,))]
    for ref, out in zip(expected, outputs, strict=False):
        if not np.issubdtype(ref.dtype, np.floating):
            continue
        scale = max(1.0, float(np.max(np.abs(ref))) if ref.size else 1.0)
        if out.shape != ref.shape or not np.allclose(out, ref, rtol=1e-3, atol=1e-4 * scale, equal_nan=True):
            return False
    return True
