"""Converters for operator versions onnx2torch 1.5 lacks, registered in onnx2torch's own registry.

onnx2torch stops at opset 17, while ``torch.onnx.export`` writes opset 18–20 (dynamo and
TorchScript alike) and skl2onnx 21. Down-converting the whole graph (onnx.version_converter)
fails on ops that have no older form — ``Gelu`` exists only from opset 20 — so instead each
missing (op, version) is registered here with ``add_converter``, the way onnx2torch registers its
own. Three kinds:

- versions that only widened the type list (``Reshape`` 19/21, ``Cast`` 19/21, ...) reuse the
  converter of the version before;
- versions whose new attributes or inputs are optional (``Resize`` 18/19, ``AveragePool`` 19,
  ``ScatterND`` 18) reuse it when the graph leaves them at their defaults, and are refused
  naming the attribute otherwise;
- versions that changed the signature (``Reduce*`` 18 take ``axes`` as an input, ``Split`` 18
  ``num_outputs``, ``Pad`` 18 ``axes``) and ops onnx2torch lacks (``Gelu`` 20, ``Trilu``,
  ``Mish``) get small modules of their own.

A few of onnx2torch's own converters compute something else than ONNX does on inputs that
exporters write; ``REPLACED`` overrides their registry entries. Importing this module registers
everything once; ``compressors.training.convert`` imports it.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from onnx2torch.node_converters.registry import add_converter, get_converter
from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node
from torch import nn

# (op, version) -> the older version whose converter handles it unchanged: these versions
# only added element types (bfloat16, float8, int4) that training never feeds.
TYPE_ONLY = {
    ("Cast", 19): 13,
    ("Cast", 21): 13,
    ("Constant", 19): 13,
    ("Constant", 21): 13,
    ("ConstantOfShape", 20): 9,
    ("ConstantOfShape", 21): 9,
    ("Equal", 19): 13,
    ("GreaterOrEqual", 16): 12,
    ("LessOrEqual", 16): 12,
    ("Identity", 19): 16,
    ("Identity", 21): 16,
    ("IsInf", 20): 10,
    ("IsNaN", 20): 13,
    ("Reshape", 19): 14,
    ("Reshape", 21): 14,
    ("Shape", 19): 15,
    ("Shape", 21): 15,
    ("Transpose", 21): 13,
    ("Unsqueeze", 21): 13,
}

# (op, version) -> (older version, {attribute: default}): reused while every attribute the new
# version added keeps its default; otherwise the node is refused, naming the attribute.
DEFAULTS_ONLY: dict[tuple[str, int], tuple[int, dict[str, Any]]] = {
    ("AveragePool", 19): (11, {"dilations": None}),
    ("Resize", 18): (13, {"antialias": 0, "axes": None, "keep_aspect_ratio_policy": "stretch"}),
    ("Resize", 19): (13, {"antialias": 0, "axes": None, "keep_aspect_ratio_policy": "stretch"}),
    ("ScatterND", 18): (16, {"reduction": "none"}),
}

REDUCE_OPS = {
    "ReduceL1": lambda x, dims, keep: x.abs().sum(dims, keepdim=keep),
    "ReduceL2": lambda x, dims, keep: x.square().sum(dims, keepdim=keep).sqrt(),
    "ReduceLogSum": lambda x, dims, keep: x.sum(dims, keepdim=keep).log(),
    "ReduceLogSumExp": lambda x, dims, keep: torch.logsumexp(x, dims, keepdim=keep),
    "ReduceMax": lambda x, dims, keep: torch.amax(x, dims, keepdim=keep),
    "ReduceMean": lambda x, dims, keep: x.mean(dims, keepdim=keep),
    "ReduceMin": lambda x, dims, keep: torch.amin(x, dims, keepdim=keep),
    "ReduceProd": lambda x, dims, keep: _prod(x, dims, keep),
    "ReduceSum": lambda x, dims, keep: x.sum(dims, keepdim=keep),
    "ReduceSumSquare": lambda x, dims, keep: x.square().sum(dims, keepdim=keep),
}


def _prod(x: torch.Tensor, dims: list[int], keep: bool) -> torch.Tensor:
    for dim in sorted((d % x.dim() for d in dims), reverse=True):
        x = x.prod(dim, keepdim=keep)
    return x


def _result(module: nn.Module, node: Any) -> OperationConverterResult:
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node=node))


def _reuse(op: str, version: int) -> Callable[[Any, Any], OperationConverterResult]:
    def convert(node: Any, graph: Any) -> OperationConverterResult:
        return get_converter(op, version)(node, graph)

    return convert


def _reuse_at_defaults(
    op: str, version: int, defaults: dict[str, Any]
) -> Callable[[Any, Any], OperationConverterResult]:
    def convert(node: Any, graph: Any) -> OperationConverterResult:
        for name, default in defaults.items():
            value = node.attributes.get(name, default)
            if name == "dilations" and value is not None and all(int(d) == 1 for d in value):
                continue
            if value != default:
                raise NotImplementedError(f"{op} with {name}={value!r} has no torch converter")
        return get_converter(op, version)(node, graph)

    return convert


class Reduce(nn.Module):
    """``Reduce*`` from opset 18: the axes arrive as an optional input, not an attribute."""

    def __init__(self, op: str, keepdims: bool, noop_with_empty_axes: bool) -> None:
        super().__init__()
        self.op, self.keepdims, self.noop = op, keepdims, noop_with_empty_axes

    def forward(self, data: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
        if axes is None or axes.numel() == 0:
            if self.noop:
                return data
            dims = list(range(data.dim()))
        else:
            dims = [int(a) for a in axes.tolist()]
        return REDUCE_OPS[self.op](data, dims, self.keepdims)


class Split(nn.Module):
    """``Split`` from opset 18: sizes from the ``split`` input, or ``num_outputs`` near-equal
    chunks (the last one smaller when the axis does not divide evenly)."""

    def __init__(self, axis: int, num_outputs: int) -> None:
        super().__init__()
        self.axis, self.num_outputs = axis, num_outputs

    def forward(self, data: torch.Tensor, split: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        if split is not None:
            return torch.split(data, [int(s) for s in split.tolist()], dim=self.axis)
        size = math.ceil(data.shape[self.axis] / self.num_outputs)
        return torch.split(data, size, dim=self.axis)


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


class Pad(nn.Module):
    """``Pad`` from opset 18: optional ``axes`` input naming which axes ``pads`` covers."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = _PAD_MODES[mode]

    def forward(
        self,
        data: torch.Tensor,
        pads: torch.Tensor,
        constant_value: torch.Tensor | None = None,
        axes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        rank = data.dim()
        given = [int(p) for p in pads.tolist()]
        chosen = list(range(rank)) if axes is None else [int(a) % rank for a in axes.tolist()]
        begin, end = [0] * rank, [0] * rank
        for i, axis in enumerate(chosen):
            begin[axis], end[axis] = given[i], given[i + len(chosen)]
        flat: list[int] = []
        for axis in reversed(range(rank)):  # torch lists the last axis first
            flat += [begin[axis], end[axis]]
        while len(flat) > 2 and flat[-2:] == [0, 0] and self.mode != "constant":
            flat = flat[:-2]  # non-constant modes pad only trailing axes in torch
        if self.mode == "constant":
            value = 0.0 if constant_value is None else float(constant_value)
            return F.pad(data, flat, mode="constant", value=value)
        return F.pad(data, flat, mode=self.mode)


class Flatten(nn.Module):
    """ONNX Flatten: (product of the dims before ``axis``, product of the rest), also when
    ``axis`` equals the rank (the rest is empty: a trailing 1), which onnx2torch's own fails on."""

    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, data: torch.Tensor) -> torch.Tensor:
        axis = self.axis % (data.dim() + 1) if self.axis < 0 else self.axis
        lead = math.prod(data.shape[:axis])
        return data.reshape(lead, -1) if data.numel() else data.reshape(lead, math.prod(data.shape[axis:]))


class Trilu(nn.Module):
    def __init__(self, upper: bool) -> None:
        super().__init__()
        self.upper = upper

    def forward(self, data: torch.Tensor, k: torch.Tensor | None = None) -> torch.Tensor:
        diagonal = 0 if k is None else int(k)
        return torch.triu(data, diagonal) if self.upper else torch.tril(data, diagonal)


def _reduce(node: Any, graph: Any) -> OperationConverterResult:
    attrs = node.attributes
    module = Reduce(
        node.operation_type, bool(attrs.get("keepdims", 1)), bool(attrs.get("noop_with_empty_axes", 0))
    )
    return _result(module, node)


def _split(node: Any, graph: Any) -> OperationConverterResult:
    axis = node.attributes.get("axis", 0)
    return _result(Split(axis, int(node.attributes.get("num_outputs", len(node.output_values)))), node)


def _pad(node: Any, graph: Any) -> OperationConverterResult:
    mode = node.attributes.get("mode", "constant")
    if mode not in _PAD_MODES:
        raise NotImplementedError(f"Pad with mode={mode!r} has no torch converter")
    return _result(Pad(mode), node)


def _gelu(node: Any, graph: Any) -> OperationConverterResult:
    return _result(nn.GELU(approximate=node.attributes.get("approximate", "none")), node)


def _flatten(node: Any, graph: Any) -> OperationConverterResult:
    return _result(Flatten(int(node.attributes.get("axis", 1))), node)


def _trilu(node: Any, graph: Any) -> OperationConverterResult:
    return _result(Trilu(bool(node.attributes.get("upper", 1))), node)


def _mish(node: Any, graph: Any) -> OperationConverterResult:
    return _result(nn.Mish(), node)


OWN: dict[tuple[str, int], Callable[[Any, Any], OperationConverterResult]] = {
    **{(op, 18): _reduce for op in REDUCE_OPS if op != "ReduceSum"},
    ("ReduceMax", 20): _reduce,
    ("ReduceMin", 20): _reduce,
    ("Split", 18): _split,
    ("Pad", 18): _pad,
    ("Pad", 19): _pad,
    ("Pad", 21): _pad,
    ("Gelu", 20): _gelu,
    ("Trilu", 14): _trilu,
    ("Mish", 18): _mish,
}

# onnx2torch's own converters that compute something else than ONNX does on inputs exporters
# write; ours replace them in the registry (Flatten with axis = rank: transformers' attention
# masks through the TorchScript exporter).
REPLACED: dict[tuple[str, int], Callable[[Any, Any], OperationConverterResult]] = {
    ("Flatten", 9): _flatten,
    ("Flatten", 11): _flatten,
    ("Flatten", 13): _flatten,
    ("Flatten", 21): _flatten,
}


def register() -> None:
    """Add every converter above to onnx2torch's registry (once; later calls do nothing)."""
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription

    def add(op: str, version: int, converter: Callable[[Any, Any], OperationConverterResult]) -> None:
        if OperationDescription("", op, version) not in _CONVERTER_REGISTRY:
            add_converter(operation_type=op, version=version)(converter)

    for (op, version), old in TYPE_ONLY.items():
        add(op, version, _reuse(op, old))
    for (op, version), (old, defaults) in DEFAULTS_ONLY.items():
        add(op, version, _reuse_at_defaults(op, old, defaults))
    for (op, version), converter in OWN.items():
        add(op, version, converter)
    for (op, version), converter in REPLACED.items():
        _CONVERTER_REGISTRY[OperationDescription("", op, version)] = converter


register()


def live_table() -> dict[tuple[str, str], tuple[int, ...]]:
    """The table as the installed onnx2torch (with this project's converters) has it. Imports torch."""
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY

    register()
    table: dict[tuple[str, str], list[int]] = {}
    for key in _CONVERTER_REGISTRY:
        table.setdefault((key.domain, key.operation_type), []).append(key.version)
    return {key: tuple(sorted(versions)) for key, versions in sorted(table.items())}


def main() -> int:
    """Rewrite ``compressors/training/operators.py``'s table from the live registry."""
    path = Path(__file__).with_name("operators.py")
    source = path.read_text(encoding="utf-8")
    head, rest = source.split("CONVERTERS: dict[tuple[str, str], tuple[int, ...]] = {\n", 1)
    tail = rest.split("\n}\n", 1)[1]
    rows = "".join(
        f'    ("{domain}", "{op}"): {versions!r},\n' for (domain, op), versions in live_table().items()
    )
    body = "CONVERTERS: dict[tuple[str, str], tuple[int, ...]] = {\n" + rows + "}\n"
    path.write_text(head + body + tail, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
