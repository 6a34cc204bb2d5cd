"""Which torch parameter holds which factorizable layer's weight, seen as an out × in matrix.

Regularizers act on the matrix the paper regularizes: a Gemm/MatMul weight as out × in, a
conv kernel reshaped to Cout × Cin·kh·kw (Alvarez & Salzmann 2017, §3). The orientation
follows from how onnx2torch stored the ONNX tensor (``Binding.transposed``), whether the
ONNX op reads it transposed (Gemm ``transB``, a Transpose node in front of a MatMul) and
that Gemm/MatMul compute x·W, i.e. hold in × out.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
import torch

from compressors.onnx.graph import attribute, initializers, producers
from compressors.onnx.layers import Layer
from compressors.training.convert import TrainableModel


@dataclass(frozen=True)
class WeightView:
    layer: str  # node label in the user's ONNX graph
    op: str
    param: str  # parameter name in the torch module
    conv: bool
    transpose: bool  # the parameter holds the in × out matrix
    bias: str | None = None  # the parameter holding the layer's bias, when torch keeps one beside it

    def matrix(self, value: torch.Tensor) -> torch.Tensor:
        """out × in view of the parameter's value."""
        if self.conv:
            return value.reshape(value.shape[0], -1)
        return value.t() if self.transpose else value

    def assign(self, param: torch.Tensor, matrix: torch.Tensor) -> None:
        """Write an out × in matrix back into the parameter, in place."""
        value = matrix.reshape(param.shape) if self.conv else (matrix.t() if self.transpose else matrix)
        param.data.copy_(value.to(param.dtype))


def weight_views(trainable: TrainableModel, model: onnx.ModelProto, layers: list[Layer]) -> list[WeightView]:
    """Views for the eligible layers whose weight is a trainable, bound parameter."""
    graph = model.graph
    inits, made_by = initializers(graph), producers(graph)
    params = dict(trainable.module.named_parameters())
    views = []
    for layer in layers:
        if not layer.eligible:
            continue
        tensor, flips = layer.weight, 0
        while (
            tensor not in inits
            and tensor in made_by
            and made_by[tensor].op_type in ("Transpose", "Identity", "Cast")
        ):
            flips += made_by[tensor].op_type == "Transpose"
            tensor = made_by[tensor].input[0]
        name = trainable.parameter_of(tensor)
        if name is None or not params[name].requires_grad:
            continue
        node = graph.node[layer.index]
        conv = layer.op == "Conv"
        if not conv:
            flips += int(attribute(node, "transB", 0)) if layer.op == "Gemm" else 0
            flips += trainable.bindings[name].transposed
            # ONNX computes x·W (in × out); an even number of flips leaves the parameter in × out
        bias = name[: -len("weight")] + "bias" if name.endswith(".weight") else None
        views.append(
            WeightView(
                layer.name,
                layer.op,
                name,
                conv,
                transpose=not conv and flips % 2 == 0,
                bias=bias if bias in params else None,
            )
        )
    return views
