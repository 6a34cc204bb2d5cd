"""ONNX ↔ torch for retraining: onnx2torch one way, weight write-back the other.

``to_torch`` prepares a validated ONNX model for onnx2torch and converts it:

- float Constant nodes become initializers, and so do weights the TorchScript exporter feeds
  through Identity nodes (it shares one tensor among layers whose weights were equal), so both
  can be trained;
- operator versions newer than onnx2torch's opset 17 convert through the converters
  ``compressors.training.onnx_converters`` registers in onnx2torch's own registry; the whole graph is
  down-converted (onnx.version_converter) only when that alone would make it convertible;
- ``Reshape(allowzero=1)``, which torch.onnx's dynamo exporter writes and onnx2torch refuses,
  becomes ``allowzero=0`` unless its target is a constant holding a zero (``_relax_reshape_allowzero``);
- a graph exported with a fixed batch is trained at any batch size (``compressors.training.any_batch``).

Every floating-point weight becomes a trainable parameter bound to the ONNX tensor it came from:
the tensors the parameter's own node reads (or, for onnx2torch's initializer buffers, the exact
input they were made for), confirmed by content, transposed for Gemm with transB=0. So
``write_back`` puts trained weights into the user's own graph: the artifact keeps the user's
opset, names, batch and structure, with no re-export.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from compressors.errors import NotRetrainable
from compressors.onnx.graph import fixed_batch, initializers, is_float_tensor, producers
from compressors.training import onnx_converters
from compressors.training.any_batch import (
    FixedBatch,
    has_only_batch_fixed,
    outputs_agree,
    symbolic_batch,
)
from compressors.training.prepare import UNTIED, prepare, user_untie_plan, verdict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Binding:
    """Where a torch tensor lives in the ONNX graph."""

    tensor: str  # initializer name (or output name of a Constant node)
    transposed: bool  # torch holds the transpose (Linear from Gemm with transB=0)


@dataclass
class TrainableModel:
    module: torch.nn.Module  # onnx2torch's GraphModule, or a FixedBatch around it
    bindings: dict[str, Binding] = field(default_factory=dict)  # parameter name -> tensor
    frozen: list[str] = field(default_factory=list)  # weights we could not bind, kept fixed
    chunk: int | None = None  # rows per forward pass when the graph's batch could not be freed

    def parameter_of(self, tensor: str) -> str | None:
        """The trainable parameter bound to ONNX tensor ``tensor``, if any."""
        return next((name for name, b in self.bindings.items() if b.tensor == tensor), None)


def to_torch(model: onnx.ModelProto) -> TrainableModel:
    """A trainable torch module computing what ``model`` computes, at any batch size."""
    ok, why = verdict(model)
    if not ok:
        raise NotRetrainable(f"the model cannot be retrained: {why}; use svd or prune instead.")
    prepared = prepare(model)
    batch = fixed_batch(prepared)
    converted, module = prepared, None
    if batch is not None and has_only_batch_fixed(prepared):
        converted, module = _convert_batch_free(prepared, model, batch)
    if module is None:
        converted, module = prepared, _convert(prepared)
    _promote_float_buffers(module)
    trainable = TrainableModel(module)
    _bind(trainable, converted)
    if batch is not None and converted is prepared:
        log.info("the graph's batch of %d could not be freed; training runs %d rows at a time", batch, batch)
        _wrap_in_chunks(trainable, batch)
    return trainable


def _convert(prepared: onnx.ModelProto) -> torch.fx.GraphModule:
    from onnx2torch import convert

    onnx_converters.register()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.getLogger("onnx2torch").setLevel(logging.ERROR)
            return convert(prepared, attach_onnx_mapping=True)
    except Exception as exc:
        raise NotRetrainable(
            f"the model could not be converted for retraining ({_first_line(exc)}); "
            "use svd or prune, which need no retraining."
        ) from exc


def _convert_batch_free(
    prepared: onnx.ModelProto, model: onnx.ModelProto, batch: int
) -> tuple[onnx.ModelProto, torch.fx.GraphModule | None]:
    """The batch-free graph and its module, when the module agrees with the user's graph."""
    try:
        free = symbolic_batch(prepared, batch)
        module = _convert(free)
        if outputs_agree(module, model, batch):
            return free, module
    except Exception as exc:  # any failure here only means training runs in chunks
        log.info("freeing the batch failed: %s", _first_line(exc))
    return prepared, None


def _wrap_in_chunks(trainable: TrainableModel, batch: int) -> None:
    trainable.module = FixedBatch(trainable.module, batch)
    trainable.bindings = {f"inner.{k}": v for k, v in trainable.bindings.items()}
    trainable.frozen = [f"inner.{k}" for k in trainable.frozen]
    trainable.chunk = batch


def _promote_float_buffers(module: torch.nn.Module) -> None:
    """onnx2torch keeps initializers it does not fold into a torch layer (MatMul weights, Add
    biases) as buffers; weights with more than one element become parameters."""
    container = getattr(module, "initializers", None)
    if container is None:
        return
    for name, buffer in list(container.named_buffers(recurse=False)):
        if buffer.is_floating_point() and buffer.numel() > 1:
            delattr(container, name)
            container.register_parameter(name, torch.nn.Parameter(buffer.detach().clone()))


def _parameter_sources(module: torch.fx.GraphModule, prepared: onnx.ModelProto) -> dict[str, list[str]]:
    """For each parameter (and each initializer buffer), the ONNX tensors it may hold: the
    initializer inputs of the node its layer was made from, or for onnx2torch's
    ``initializers.onnx_initializer_N`` buffers the very input they were created for."""
    from onnx2torch.onnx_graph import OnnxGraph

    sources: dict[str, list[str]] = {}
    nodes = OnnxGraph(prepared.graph).nodes
    for name, _ in module.named_parameters():
        top = name.split(".", 1)[0]
        if top in nodes:
            sources[name] = list(nodes[top].input_values)
    for fx_node in module.graph.nodes:
        if fx_node.op != "call_module":
            continue
        mapping = getattr(module.get_submodule(fx_node.target), "onnx_mapping", None)
        if mapping is None:
            continue
        values = [*fx_node.args, *fx_node.kwargs.values()]
        for tensor, arg in zip([v for v in mapping.inputs if v], values, strict=False):
            if isinstance(arg, torch.fx.Node) and arg.op == "get_attr":
                sources[str(arg.target)] = [tensor]
    return sources


def _bind(trainable: TrainableModel, prepared: onnx.ModelProto) -> None:
    """Bind each float parameter to the initializer it holds (by source and content); a
    tensor several nodes read is one parameter for all of them (``_tie_buffers``). What
    cannot be bound stays frozen."""
    uses: dict[str, int] = {}
    for node in prepared.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    sources = _parameter_sources(trainable.module, prepared)  # type: ignore[arg-type]
    tied = _tie_buffers(trainable.module, sources, uses)
    tensors = {
        t.name: t
        for t in prepared.graph.initializer
        if is_float_tensor(t) and (uses.get(t.name) == 1 or t.name in tied)
    }
    taken: set[str] = set()
    for name, param in trainable.module.named_parameters():
        value = param.detach().cpu().numpy()
        binding = _claim(
            value, [t for t in sources.get(name, []) if t in tensors and t not in taken], tensors
        )
        if binding is None:
            param.requires_grad_(False)
            trainable.frozen.append(name)
        else:
            taken.add(binding.tensor)
            trainable.bindings[name] = binding


def _tie_buffers(module: torch.nn.Module, sources: dict[str, list[str]], uses: dict[str, int]) -> set[str]:
    """onnx2torch makes one initializer buffer per reading node, so a tensor read by several
    nodes (a language model's head tied to its token embedding, through a Transpose) would
    train as independent copies. Every reading gets the same parameter instead; returns the
    tensors so tied."""
    container = getattr(module, "initializers", None)
    if container is None:
        return set()
    readers: dict[str, list[str]] = {}
    for target, tensors in sources.items():
        if target.startswith("initializers.") and len(tensors) == 1 and uses.get(tensors[0], 0) > 1:
            readers.setdefault(tensors[0], []).append(target.split(".", 1)[1])
    own = dict(container.named_parameters(recurse=False))
    tied = set()
    for tensor, names in readers.items():
        if (
            len(names) < 2
            or not all(n in own for n in names)
            or any(own[n].shape != own[names[0]].shape for n in names)
        ):
            continue
        keep = own[names[0]]
        for other in names[1:]:
            delattr(container, other)
            container.register_parameter(other, keep)
        tied.add(tensor)
    return tied


def _claim(value: np.ndarray, candidates: list[str], tensors: dict[str, onnx.TensorProto]) -> Binding | None:
    for tensor in candidates:
        array = numpy_helper.to_array(tensors[tensor])
        if array.shape == value.shape and np.array_equal(array.astype(np.float32), value.astype(np.float32)):
            return Binding(tensor, transposed=False)
        if value.ndim == 2 and array.shape == value.T.shape and np.array_equal(array.T, value):
            return Binding(tensor, transposed=True)
    return None


def write_back(trainable: TrainableModel, model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` holding the module's current weights (ONNX dtypes kept)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    params = dict(trainable.module.named_parameters())
    targets = {t.name: t for t in out.graph.initializer}
    constants = {n.output[0]: n for n in out.graph.node if n.op_type == "Constant"}
    identities = {n.output[0]: n for n in out.graph.node if n.op_type == "Identity"}
    plan = user_untie_plan(model) if any(UNTIED in b.tensor for b in trainable.bindings.values()) else {}
    for name, binding in trainable.bindings.items():
        value = params[name].detach().cpu().numpy()
        if binding.transposed:
            value = value.T
        if binding.tensor in targets:
            old = targets[binding.tensor]
            old.CopyFrom(_like(old, value))
        elif binding.tensor in constants:
            attr = next(a for a in constants[binding.tensor].attribute if a.name == "value")
            attr.t.CopyFrom(_like(attr.t, value))
        elif binding.tensor in identities:
            _split_shared(out.graph, identities[binding.tensor], value)
        elif binding.tensor in plan:
            _write_untied(out.graph, plan, binding.tensor, value)
    return out


def _split_shared(graph: onnx.GraphProto, identity: onnx.NodeProto, value: np.ndarray) -> None:
    """Give the layer reading ``identity``'s output a tensor of its own, unless its trained copy
    still equals the shared one (then the user's graph stays as it was)."""
    inits, made_by = initializers(graph), producers(graph)
    source = identity.input[0]
    while source not in inits and source in made_by and made_by[source].op_type == "Identity":
        source = made_by[source].input[0]
    if source not in inits:
        return
    template = inits[source]
    if np.array_equal(numpy_helper.to_array(template), value.astype(numpy_helper.to_array(template).dtype)):
        return
    own = _like(template, value)
    own.name = identity.output[0]
    graph.initializer.append(own)
    graph.node.remove(identity)


def _write_untied(
    graph: onnx.GraphProto, plan: dict[str, tuple[str, str, int]], copy_name: str, value: np.ndarray
) -> None:
    """The layer that trained its own copy of a shared initializer reads a tensor of its own,
    unless the copy still equals the shared one (then the user's graph stays as it was)."""
    name, reader, k = plan[copy_name]
    inits, made_by = initializers(graph), producers(graph)
    if name not in inits or reader not in made_by:
        log.info("the trained copy %s has no place in the graph; left as it was", copy_name)
        return
    template = inits[name]
    if np.array_equal(numpy_helper.to_array(template), value.astype(numpy_helper.to_array(template).dtype)):
        return
    own = _like(template, value)
    own.name = copy_name
    graph.initializer.append(own)
    made_by[reader].input[k] = copy_name


def _like(template: onnx.TensorProto, value: np.ndarray) -> onnx.TensorProto:
    dtype = onnx.helper.tensor_dtype_to_np_dtype(template.data_type)
    tensor = numpy_helper.from_array(np.ascontiguousarray(value.astype(dtype)), template.name)
    return tensor


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:300]
