"""``svd``: training-free truncated SVD of every eligible Gemm/MatMul/Conv layer."""

from __future__ import annotations

from compressors.inspection import analysis_shapes
from compressors.loading import LoadedModel
from compressors.lowrank import factorize
from compressors.ranks import RankRule
from compressors.result import CompressionResult


def compress(model: LoadedModel, rule: RankRule, sample_shapes: dict | None = None) -> CompressionResult:
    """Factorize ``model`` by ``rule`` (energy, whole-model target or fixed ranks)."""
    shapes, batch = analysis_shapes(model.proto, sample_shapes)
    return factorize(model.proto, shapes, rule, batch)
