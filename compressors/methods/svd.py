"""``svd``: training-free truncated SVD of every eligible Gemm/MatMul/Conv layer."""

from __future__ import annotations

from compressors.intake.loading import LoadedModel
from compressors.onnx.inspection import analysis_shapes
from compressors.onnx.lowrank import factorize
from compressors.onnx.ranks import RankRule
from compressors.onnx.result import CompressionResult


def compress(model: LoadedModel, rule: RankRule, sample_shapes: dict | None = None) -> CompressionResult:
    """Factorize ``model`` by ``rule`` (energy, whole-model target or fixed ranks)."""
    shapes, batch = analysis_shapes(model.proto, sample_shapes)
    return factorize(model.proto, shapes, rule, batch)
