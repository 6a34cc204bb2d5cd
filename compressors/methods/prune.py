"""``prune``: training-free magnitude pruning, optionally followed by masked fine-tuning."""

from __future__ import annotations

from compressors.intake.loading import LoadedModel
from compressors.onnx.inspection import analysis_shapes
from compressors.onnx.ranks import RankRule
from compressors.onnx.result import CompressionResult
from compressors.onnx.sparsity import magnitude_prune
from compressors.training.loop import TrainConfig
from compressors.training.retrain import Hooks, TrainingData, finish


def compress(
    model: LoadedModel,
    rule: RankRule,
    training: TrainingData | None = None,
    config: TrainConfig | None = None,
    finetune_epochs: int = 0,
    hooks: Hooks | None = None,
    sample_shapes: dict | None = None,
) -> CompressionResult:
    shapes, batch = analysis_shapes(model.proto, sample_shapes)
    result = magnitude_prune(model.proto, shapes, rule, batch)
    return finish(
        result, training, config or TrainConfig(), finetune_epochs, hooks or Hooks(), keep_zeros=True
    )
