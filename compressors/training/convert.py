"""ONNX ↔ torch for retraining: onnx2torch one way, weight write-back the other.

``to_torch`` prepares a validated ONNX model for onnx2torch (float Constant nodes become
initializers; opset > 17 is brought down with onnx.version_converter because onnx2torch
stops at opset 17; ``Reshape(allowzero=1)``, which torch.onnx's dynamo exporter writes and
onnx2torch refuses, becomes ``allowzero=0`` unless its target is a constant holding a zero —
see ``_relax_reshape_allowzero``), converts it, and makes every floating-point weight a trainable
parameter. Each parameter is bound to the ONNX tensor it came from (matched by content,
transposed for Gemm with transB=0), so ``write_back`` puts trained weights into the user's
own graph: the artifact keeps the user's opset, names and structure, with no re-export.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from compressors.errors import NotRetrainable
from compressors.onnx.graph import constant_array, initializers, is_float_tensor, producers
from compressors.onnx.inspection import opset_of

MAX_OPSET = 17  # the newest opset onnx2torch 1.5 converts


@dataclass(frozen=True)
class Binding:
    """Where a torch tensor lives in the ONNX graph."""

    tensor: str  # initializer name (or output name of a Constant node)
    transposed: bool  # torch holds the transpose (Linear from Gemm with transB=0)


@dataclass
class TrainableModel:
    module: torch.fx.GraphModule
    bindings: dict[str, Binding] = field(default_factory=dict)  # parameter name -> tensor
    frozen: list[str] = field(default_factory=list)  # weights we could not bind, kept fixed

    def parameter_of(self, tensor: str) -> str | None:
        """The trainable parameter bound to ONNX tensor ``tensor``, if any."""
        return next((name for name, b in self.bindings.items() if b.tensor == tensor), None)


def prepare(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` that onnx2torch can convert, with identical semantics."""
    prepared = onnx.ModelProto()
    prepared.CopyFrom(model)
    _hoist_constants(prepared.graph)
    if opset_of(prepared) > MAX_OPSET:
        try:
            prepared = onnx.version_converter.convert_version(prepared, MAX_OPSET)
        except Exception as exc:
            raise NotRetrainable(
                f"the model's opset {opset_of(model)} could not be brought down to {MAX_OPSET} for "
                f"retraining ({_first_line(exc)}); use svd or prune, which need no retraining."
            ) from exc
    _relax_reshape_allowzero(prepared.graph)
    return prepared


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
                shape = _shape_constant(node.input[1], inits, made_by)
                if shape is None or not (shape == 0).any():
                    attr.i = 0


def _shape_constant(
    name: str, inits: dict[str, onnx.TensorProto], made_by: dict[str, onnx.NodeProto]
) -> np.ndarray | None:
    """A Reshape target that is constant: one tensor, or a Concat of constant pieces (how an
    unoptimized dynamo export builds it)."""
    node = made_by.get(name)
    if node is not None and node.op_type == "Concat":
        pieces = [_shape_constant(piece, inits, made_by) for piece in node.input]
        if all(p is not None and p.ndim == 1 for p in pieces):
            return np.concatenate([p for p in pieces if p is not None])
        return None
    return constant_array(name, inits, made_by)


def check_retrainable(model: onnx.ModelProto) -> tuple[bool, str]:
    """(True, "") when every operator converts to torch; else (False, why)."""
    from onnx2torch.node_converters import get_converter

    try:
        prepared = prepare(model)
    except NotRetrainable as exc:
        return False, exc.message
    opsets = {o.domain or "": o.version for o in prepared.opset_import}
    for node in prepared.graph.node:
        domain = node.domain or ""
        try:
            get_converter(node.op_type, opsets.get(domain, MAX_OPSET), domain or "")
        except NotImplementedError:
            where = f"{domain}::" if domain else ""
            return (
                False,
                f"operator {where}{node.op_type} (opset {opsets.get(domain)}) has no torch converter",
            )
    for node in prepared.graph.node:
        if node.op_type == "Reshape" and any(a.name == "allowzero" and a.i for a in node.attribute):
            return False, "a Reshape with allowzero=1 has a constant target shape holding a 0"
    return True, ""


def to_torch(model: onnx.ModelProto) -> TrainableModel:
    """A trainable torch module computing what ``model`` computes."""
    from onnx2torch import convert

    ok, why = check_retrainable(model)
    if not ok:
        raise NotRetrainable(f"the model cannot be retrained: {why}; use svd or prune instead.")
    prepared = prepare(model)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.getLogger("onnx2torch").setLevel(logging.ERROR)
            module = convert(prepared)
    except Exception as exc:
        raise NotRetrainable(
            f"the model could not be converted for retraining ({_first_line(exc)}); "
            "use svd or prune, which need no retraining."
        ) from exc
    _promote_float_buffers(module)
    trainable = TrainableModel(module)
    _bind(trainable, prepared)
    return trainable


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


def _digest(array: np.ndarray) -> tuple[tuple[int, ...], str]:
    contiguous = np.ascontiguousarray(array, dtype=np.float32)
    return contiguous.shape, hashlib.blake2b(contiguous.tobytes(), digest_size=16).hexdigest()


def _bind(trainable: TrainableModel, prepared: onnx.ModelProto) -> None:
    uses: dict[str, int] = {}
    for node in prepared.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    candidates: dict[tuple[tuple[int, ...], str], list[str]] = {}
    for tensor in prepared.graph.initializer:
        if is_float_tensor(tensor) and uses.get(tensor.name, 0) == 1:
            candidates.setdefault(_digest(numpy_helper.to_array(tensor)), []).append(tensor.name)
    taken: set[str] = set()
    for name, param in trainable.module.named_parameters():
        value = param.detach().cpu().numpy()
        binding = _claim(candidates, taken, _digest(value), transposed=False)
        if binding is None and value.ndim == 2:
            binding = _claim(candidates, taken, _digest(value.T), transposed=True)
        if binding is None:
            param.requires_grad_(False)
            trainable.frozen.append(name)
        else:
            trainable.bindings[name] = binding


def _claim(
    candidates: dict[tuple[tuple[int, ...], str], list[str]], taken: set[str], key: object, transposed: bool
) -> Binding | None:
    for tensor in candidates.get(key, []):  # type: ignore[call-overload]
        if tensor not in taken:
            taken.add(tensor)
            return Binding(tensor, transposed)
    return None


def write_back(trainable: TrainableModel, model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` holding the module's current weights (ONNX dtypes kept)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    params = dict(trainable.module.named_parameters())
    targets = {t.name: t for t in out.graph.initializer}
    constants = {n.output[0]: n for n in out.graph.node if n.op_type == "Constant"}
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
    return out


def _like(template: onnx.TensorProto, value: np.ndarray) -> onnx.TensorProto:
    dtype = onnx.helper.tensor_dtype_to_np_dtype(template.data_type)
    tensor = numpy_helper.from_array(np.ascontiguousarray(value.astype(dtype)), template.name)
    return tensor


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:300]
