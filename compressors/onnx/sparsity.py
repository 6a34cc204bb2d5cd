"""Unstructured magnitude pruning on the ONNX graph: weights set to zero, shapes unchanged.

Only nonzeros shrink; MACs are reported unchanged, because dense kernels (onnxruntime's
included) do the same work on zeros. Rules mirror the rank rules: ``Energy(e)`` keeps, per
layer, the largest-magnitude weights holding ≥ e of Σw²; ``Target(r, "params")`` keeps the
globally largest weights so that the whole model's nonzeros are r of its parameters.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from compressors.errors import InvalidSpec
from compressors.onnx.graph import Shape, initializers, producers
from compressors.onnx.layers import Layer, find_layers
from compressors.onnx.macs import count_params
from compressors.onnx.ranks import Energy, RankRule, Target, truncate_to_energy
from compressors.onnx.result import CompressionResult, LayerResult


def weight_tensor(model: onnx.ModelProto, layer: Layer) -> onnx.TensorProto | None:
    """The initializer behind a layer's weight, through Transpose/Identity nodes."""
    inits, made_by = initializers(model.graph), producers(model.graph)
    name = layer.weight
    while name not in inits and name in made_by and made_by[name].op_type in ("Transpose", "Identity"):
        name = made_by[name].input[0]
    return inits.get(name)


def magnitude_prune(
    model: onnx.ModelProto, shapes: Mapping[str, Shape], rule: RankRule, batch: int = 1
) -> CompressionResult:
    """Zero the smallest weights of every eligible layer by ``rule``; returns a new model."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    everything = find_layers(out, shapes, batch)
    layers = [
        (layer, t) for layer in everything if layer.eligible and (t := weight_tensor(out, layer)) is not None
    ]
    values = [numpy_helper.to_array(t) for _, t in layers]
    if isinstance(rule, Target):
        if rule.metric != "params":
            raise InvalidSpec(
                "unstructured pruning leaves MACs unchanged; give target_params (a nonzeros ratio) instead."
            )
        thresholds = _global_thresholds(out, values, rule.ratio)
    elif isinstance(rule, Energy):
        thresholds = [_energy_threshold(v, rule.energy) for v in values]
    else:
        raise InvalidSpec("pruning takes energy or target_params, not fixed ranks.")
    results = []
    for (layer, tensor), value, threshold in zip(layers, values, thresholds, strict=True):
        pruned = np.where(np.abs(value) >= threshold, value, 0).astype(value.dtype)
        tensor.CopyFrom(numpy_helper.from_array(pruned, tensor.name))
        energy = float(
            (pruned.astype(np.float64) ** 2).sum() / max((value.astype(np.float64) ** 2).sum(), 1e-30)
        )
        results.append(
            LayerResult.of(layer, energy_kept=energy, nonzeros_after=int(np.count_nonzero(pruned)))
        )
    macs = sum(layer.macs for layer in everything)
    return CompressionResult(out, results, macs, macs)


def count_nonzeros(model: onnx.ModelProto, shapes: Mapping[str, Shape], batch: int = 1) -> CompressionResult:
    """The accounting of a model pruned elsewhere (e.g. by log α): nonzeros per eligible
    layer, params and MACs unchanged."""
    layers = find_layers(model, shapes, batch)
    rows = [
        LayerResult.of(layer, nonzeros_after=int(np.count_nonzero(numpy_helper.to_array(tensor))))
        for layer in layers
        if layer.eligible and (tensor := weight_tensor(model, layer)) is not None
    ]
    macs = sum(layer.macs for layer in layers)
    return CompressionResult(model, rows, macs, macs)


def _energy_threshold(value: np.ndarray, energy: float) -> float:
    """The magnitude of the last weight kept when the largest ones hold ≥ ``energy`` of Σw²."""
    magnitudes = np.sort(np.abs(value.astype(np.float64)).ravel())[::-1]
    return float(magnitudes[truncate_to_energy(magnitudes, energy) - 1])


def _global_thresholds(model: onnx.ModelProto, values: list[np.ndarray], ratio: float) -> list[float]:
    params, nonzeros = count_params(model)
    prunable_nonzeros = sum(int(np.count_nonzero(v)) for v in values)
    fixed = nonzeros - prunable_nonzeros  # biases, norms, layers we do not prune
    keep = round(ratio * params) - fixed
    if keep <= 0:
        raise InvalidSpec(
            f"a nonzeros target of {ratio:g} is unreachable: weights that are not pruned already hold "
            f"{fixed / params:.1%} of the parameters."
        )
    magnitudes = np.sort(np.concatenate([np.abs(v).ravel() for v in values]))[::-1]
    threshold = float(magnitudes[min(keep, len(magnitudes)) - 1]) if keep < len(magnitudes) else 0.0
    return [max(threshold, float(np.finfo(np.float32).tiny))] * len(values)
