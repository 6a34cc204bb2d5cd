"""``l2``: fine-tune with weight decay, then truncate — the baseline the paper omitted.

Decoupled weight decay (AdamW, Loshchilov & Hutter 2019) with coefficient ``strength`` on
every trainable weight; then the same truncation as ``nuclear`` and ``svd``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import onnx

from compressors.intake.loading import LoadedModel
from compressors.onnx.inspection import analysis_shapes
from compressors.onnx.lowrank import factorize
from compressors.onnx.ranks import RankRule
from compressors.onnx.result import CompressionResult
from compressors.training.convert import write_back
from compressors.training.loop import TrainConfig
from compressors.training.retrain import (
    Hooks,
    TrainingData,
    finish,
    run_training,
    stage_summary,
    trainable_with_views,
)


def train_l2(
    model: LoadedModel, training: TrainingData, config: TrainConfig, strength: float, hooks: Hooks
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The user's graph with weights trained under weight decay ``strength``, and the summary."""
    trainable, _ = trainable_with_views(model.proto, training.sample_shapes)
    trained = run_training(trainable, training, replace(config, weight_decay=strength), "train", hooks)
    return write_back(trainable, model.proto), {**stage_summary(trained), "strength": strength}


def compress(
    model: LoadedModel,
    training: TrainingData,
    rule: RankRule,
    config: TrainConfig,
    strength: float,
    finetune_epochs: int = 0,
    hooks: Hooks | None = None,
) -> CompressionResult:
    hooks = hooks or Hooks()
    decayed, summary = train_l2(model, training, config, strength, hooks)
    shapes, batch = analysis_shapes(decayed, training.sample_shapes)
    result = factorize(decayed, shapes, rule, batch)
    result.training = {"train": summary}
    return finish(result, training, config, finetune_epochs, hooks, keep_zeros=False)
