"""INT8 on top of the compressed model, with onnxruntime's own quantization tools.

- ``static``: QDQ format (QuantizeLinear/DequantizeLinear pairs that onnxruntime fuses into
  integer kernels at load time), per-channel signed 8-bit weights, 8-bit activations whose
  ranges are calibrated (min/max) on samples of the dataset.
- ``dynamic``: 8-bit weights, activation ranges computed per batch at run time, for the
  matrix products only. Convolutions are never quantized dynamically: onnxruntime runs
  them as ConvInteger, a slow path (the digits CNN ran 3.5× slower), so they stay float.
  Gemm has no dynamic integer kernel, so a plain Gemm (α = β = 1, no transposed input) is
  first rewritten as MatMul + Add, which has.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compressors.onnx.graph import (
    attribute,
    constant_array,
    fixed_batch,
    graph_inputs,
    initializers,
    producers,
)
from compressors.onnx.layers import remove_unused

Quantize = Literal["none", "dynamic", "static"]
QUANTIZE_MODES: tuple[Quantize, ...] = ("none", "dynamic", "static")
CALIBRATION_SAMPLES = 256  # min/max calibration saturates well before this on small inputs
CALIBRATION_BATCH = 32


def quantize_model(
    model: onnx.ModelProto, mode: Quantize, calibration: np.ndarray | None = None
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The model quantized by ``mode`` and what was done (for the report). ``static`` needs
    ``calibration`` inputs (samples shaped like the model's first input)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    # the tools log advice ("consider pre-processing") on the root logger at WARNING
    with _quiet(), tempfile.TemporaryDirectory(prefix="modelpress-quantize-") as tmp:
        source, target = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
        if mode == "static":
            if calibration is None or len(calibration) == 0:
                raise ValueError("static quantization needs calibration samples")
            onnx.save(model, source)
            samples = _spread(calibration, CALIBRATION_SAMPLES)
            quantize_static(
                source,
                target,
                _Reader(graph_inputs(model)[0].name, samples, fixed_batch(model)),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
            )
            facts: dict[str, Any] = {
                "mode": "static",
                "format": "QDQ",
                "per_channel": True,
                "weights": "int8",
                "activations": "int8",
                "calibration": "min/max",
                "calibration_samples": len(samples),
            }
        else:
            onnx.save(gemm_as_matmul(model), source)
            quantize_dynamic(
                source, target, op_types_to_quantize=["MatMul"], per_channel=True, weight_type=QuantType.QInt8
            )
            facts = {"mode": "dynamic", "weights": "int8", "ops": ["MatMul", "Gemm"], "convs": "float"}
        quantized = onnx.load(target)
    return quantized, facts


def gemm_as_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """Each Gemm with α = β = 1, no transposed A and a constant B, as MatMul (+ Add of C)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits, made_by = initializers(graph), producers(graph)
    nodes: list[onnx.NodeProto] = []
    for index, node in enumerate(graph.node):
        plain = (
            node.op_type == "Gemm"
            and float(attribute(node, "alpha", 1.0)) == 1.0
            and float(attribute(node, "beta", 1.0)) == 1.0
            and not attribute(node, "transA", 0)
        )
        weight = constant_array(node.input[1], inits, made_by) if plain else None
        if weight is None:
            nodes.append(node)
            continue
        stem = node.name or f"gemm{index}"
        if attribute(node, "transB", 0):
            weight = weight.T
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight), f"{stem}.matmul_w"))
        has_bias = len(node.input) > 2 and bool(node.input[2])
        product = f"{stem}.matmul" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], f"{stem}.matmul_w"], [product], name=stem))
        if has_bias:
            nodes.append(
                helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{stem}.add")
            )
    del graph.node[:]
    graph.node.extend(nodes)
    remove_unused(graph)
    return out


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _spread(x: np.ndarray, count: int) -> np.ndarray:
    """Up to ``count`` evenly spaced samples of ``x``."""
    if len(x) <= count:
        return x
    return x[np.linspace(0, len(x) - 1, count).astype(np.int64)]


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over an array, in batches (a fixed-batch
    graph's own batch, the last one padded with copies of its last row)."""

    def __init__(self, name: str, x: np.ndarray, fixed: int | None = None) -> None:
        self.name = name
        size = fixed or CALIBRATION_BATCH
        batches = [x[i : i + size] for i in range(0, len(x), size)]
        if fixed and batches and len(batches[-1]) < fixed:
            last = batches[-1]
            batches[-1] = np.concatenate([last, np.repeat(last[-1:], fixed - len(last), axis=0)])
        self.batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {self.name: batch.astype(np.float32)}
