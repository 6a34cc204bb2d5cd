"""What every method returns: the compressed model and the per-layer accounting."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import onnx

from compressors.onnx.layers import Layer


@dataclass
class LayerResult:
    """One row of the report's per-layer table."""

    name: str
    op: str
    shape: list[int]
    full_rank: int
    rank: int | None  # rank kept; None when left dense or not factorized
    energy_kept: float | None  # share of Σσ² (factorization) or Σw² (pruning) kept
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    nonzeros_after: int | None = None  # unstructured sparsity: nonzeros left, MACs unchanged
    channels: tuple[int, int] | None = None  # (kept, before) output channels, group lasso

    @classmethod
    def of(
        cls,
        layer: Layer,
        *,
        params_after: int | None = None,
        macs_after: int | None = None,
        rank: int | None = None,
        energy_kept: float | None = None,
        nonzeros_after: int | None = None,
        channels: tuple[int, int] | None = None,
    ) -> LayerResult:
        """The row of ``layer``; what is not given after compression is as before."""
        return cls(
            name=layer.name,
            op=layer.op,
            shape=list(layer.weight_shape),
            full_rank=layer.full_rank,
            rank=rank,
            energy_kept=energy_kept,
            params_before=layer.params,
            params_after=layer.params if params_after is None else params_after,
            macs_before=layer.macs,
            macs_after=layer.macs if macs_after is None else macs_after,
            nonzeros_after=nonzeros_after,
            channels=channels,
        )


@dataclass
class CompressionResult:
    model: onnx.ModelProto
    layers: list[LayerResult] = field(default_factory=list)
    macs_before: int = 0  # whole model, per sample
    macs_after: int = 0
    training: dict[str, Any] = field(default_factory=dict)  # per stage: history, seconds, steps
    notes: list[str] = field(default_factory=list)
