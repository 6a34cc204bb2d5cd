"""The steps retraining methods share: ONNX → torch → train under a regularizer → ONNX,
fine-tuning a compressed model (holding its zeros when it is sparse)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import onnx
import torch

from compressors.onnx.inspection import analysis_shapes
from compressors.onnx.layers import find_layers
from compressors.onnx.outputs import up_to
from compressors.training.convert import TrainableModel, to_torch, write_back
from compressors.training.inputs import Hooks, TrainConfig, TrainingData
from compressors.training.loop import Regularizer, TrainResult, train
from compressors.training.views import WeightView, weight_views


def trainable_with_views(
    model: onnx.ModelProto, sample_shapes: dict | None, output: str | None = None
) -> tuple[TrainableModel, list[WeightView]]:
    """The part of ``model`` computing ``output`` (all of it when None) as a trainable module,
    and the views of its factorizable weights."""
    trainable = to_torch(up_to(model, output) if output is not None else model)
    shapes, batch = analysis_shapes(model, sample_shapes)
    return trainable, weight_views(trainable, model, find_layers(model, shapes, batch))


@dataclass
class Retrained:
    """The user's graph holding the weights training left, and what training did."""

    model: onnx.ModelProto
    summary: dict[str, Any]
    trainable: TrainableModel
    views: list[WeightView]
    regularizer: Regularizer | None


def retrain(
    model: onnx.ModelProto,
    training: TrainingData,
    config: TrainConfig,
    hooks: Hooks,
    regularizer: Callable[[TrainableModel, list[WeightView]], Regularizer | None],
) -> Retrained:
    """Convert ``model``, train it under the regularizer built for its weight views, write
    the weights back. The summary records the strength (``config.strength``)."""
    trainable, views = trainable_with_views(model, training.sample_shapes, training.logits)
    penalty = regularizer(trainable, views)
    trained = run_training(trainable, training, config, "train", hooks, penalty)
    summary = {**stage_summary(trained), "strength": config.strength}
    return Retrained(write_back(trainable, model), summary, trainable, views, penalty)


def run_training(
    trainable: TrainableModel,
    training: TrainingData,
    config: TrainConfig,
    stage: str,
    hooks: Hooks,
    regularizer: Regularizer | None = None,
    after_step: Callable[[], None] | None = None,
) -> TrainResult:
    data = training.data
    checkpoint = hooks.checkpoint_dir / f"{stage}.pt" if hooks.checkpoint_dir else None
    return train(
        trainable.module,
        data.inputs(),
        data.y,
        config,
        teacher_logits=training.teacher,
        regularizer=regularizer,
        validation=(data.inputs(val=True), data.y_val, training.teacher_val),
        stage=stage,
        progress=hooks.progress,
        should_stop=hooks.should_stop,
        checkpoint=checkpoint,
        after_step=after_step,
    )


def zero_masks(trainable: TrainableModel, views: list[WeightView]) -> Callable[[], None]:
    """An after-step hook that keeps pruned weights at zero while fine-tuning."""
    params = dict(trainable.module.named_parameters())
    masks = {v.param: (params[v.param].detach() != 0) for v in views}
    if not any(bool((~m).any()) for m in masks.values()):
        return lambda: None

    @torch.no_grad()
    def apply() -> None:
        for name, mask in masks.items():
            params[name].mul_(mask.to(params[name].device))

    return apply


def finetune(
    model: onnx.ModelProto,
    training: TrainingData,
    config: TrainConfig,
    epochs: int,
    hooks: Hooks,
    keep_zeros: bool,
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Fine-tune a compressed ONNX model (optionally holding its zeros) and return it."""
    trainable, views = trainable_with_views(model, training.sample_shapes, training.logits)
    hook = zero_masks(trainable, views) if keep_zeros else None
    tuned = replace(config, epochs=epochs, weight_decay=0.0)
    result = run_training(trainable, training, tuned, "finetune", hooks, after_step=hook)
    return write_back(trainable, model), stage_summary(result)


def stage_summary(result: TrainResult) -> dict[str, Any]:
    return {
        "seconds": round(result.seconds, 3),
        "steps": result.steps,
        "history": result.history,
        "resumed_from_epoch": result.resumed_from_epoch,
    }
