"""What a model is: inputs, outputs, opset, parameters, MACs per layer, what can be factorized.

MACs are per sample: counted at batch 1, or at the model's fixed batch and divided by it.
Symbolic non-batch dimensions (sequence length, image size) are taken from a dataset's
sample shape when one is given, else set to 1; the report says which.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import onnx

from compressors.onnx.graph import Shape, concrete_input_shapes, fixed_batch, graph_inputs, static_shapes
from compressors.onnx.layers import find_layers
from compressors.onnx.macs import count_params


@dataclass
class TensorSpec:
    name: str
    dtype: str
    shape: list[int | str]  # symbolic dims by name


@dataclass
class LayerSummary:
    name: str
    op: str
    weight_shape: list[int]
    params: int
    macs: int
    eligible: bool
    reason: str


@dataclass
class ModelInfo:
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    opset: int
    ir_version: int
    producer: str
    params: int
    nonzeros: int
    macs: int
    layers: list[LayerSummary]
    external_files: list[str] = field(default_factory=list)
    retrainable: bool | None = None  # None until checked (the check imports torch)
    retrainable_reason: str = ""

    @property
    def eligible_layers(self) -> list[LayerSummary]:
        return [layer for layer in self.layers if layer.eligible]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelInfo:
        values = dict(data)
        values["inputs"] = [TensorSpec(**t) for t in data["inputs"]]
        values["outputs"] = [TensorSpec(**t) for t in data["outputs"]]
        values["layers"] = [LayerSummary(**layer) for layer in data["layers"]]
        return cls(**values)


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor_type = value.type.tensor_type
    dtype = onnx.TensorProto.DataType.Name(tensor_type.elem_type).lower()
    shape: list[int | str] = [
        int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor_type.shape.dim
    ]
    return TensorSpec(value.name, dtype, shape)


def analysis_shapes(
    model: onnx.ModelProto, sample_shapes: Mapping[str, Shape] | None = None
) -> tuple[dict[str, Shape], int]:
    """Static shapes of the MAC-bearing ops at batch 1 (or the model's fixed batch), and
    that batch, by which MACs are divided to give per-sample figures."""
    batch = fixed_batch(model) or 1
    inputs = concrete_input_shapes(model, 1, sample_shapes)
    return static_shapes(model, inputs), batch


def inspect_model(
    model: onnx.ModelProto,
    sample_shapes: Mapping[str, Shape] | None = None,
    external_files: list[str] | None = None,
) -> ModelInfo:
    shapes, batch = analysis_shapes(model, sample_shapes)
    layers = find_layers(model, shapes, batch)
    params, nonzeros = count_params(model)
    return ModelInfo(
        inputs=[_spec(v) for v in graph_inputs(model)],
        outputs=[_spec(v) for v in model.graph.output],
        opset=opset_of(model),
        ir_version=int(model.ir_version),
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        params=params,
        nonzeros=nonzeros,
        macs=sum(layer.macs for layer in layers),
        layers=[
            LayerSummary(
                layer.name,
                layer.op,
                list(layer.weight_shape),
                layer.params,
                layer.macs,
                layer.eligible,
                layer.reason,
            )
            for layer in layers
        ],
        external_files=list(external_files or []),
    )
