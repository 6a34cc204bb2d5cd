"""The steps retraining methods share: teacher logits, ONNX → torch → train → ONNX, masks.

The original model's logits (computed once with onnxruntime) are the teacher for
distillation, and the only target when the dataset has no labels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from compressors.errors import InvalidSpec
from compressors.intake.datasets import Dataset
from compressors.onnx import metrics
from compressors.onnx.inspection import analysis_shapes
from compressors.onnx.layers import find_layers
from compressors.onnx.result import CompressionResult
from compressors.training.convert import TrainableModel, to_torch, write_back
from compressors.training.loop import Regularizer, TrainConfig, TrainProgress, TrainResult, train
from compressors.training.views import WeightView, weight_views


@dataclass
class Hooks:
    """How a method talks to whoever runs it."""

    progress: Callable[[TrainProgress], None] | None = None
    should_stop: Callable[[], bool] | None = None
    checkpoint_dir: Path | None = None  # per-stage checkpoints live here; resumed when present


@dataclass
class TrainingData:
    data: Dataset
    teacher: np.ndarray  # original model's logits on data.x
    teacher_val: np.ndarray  # and on data.x_val
    sample_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @classmethod
    def build(cls, model: onnx.ModelProto, data: Dataset | None, input_name: str) -> TrainingData:
        if data is None:
            raise InvalidSpec("retraining methods need data: give --data digits or an .npz with x (and y).")
        session = metrics.session(model, threads=2)
        return cls(
            data,
            metrics.predict(session, data.x),
            metrics.predict(session, data.x_val),
            {input_name: data.sample_shape},
        )

    def steps(self, config: TrainConfig) -> int:
        """Optimizer steps in ``config.epochs`` passes over the training split."""
        return config.epochs * math.ceil(len(self.data.x) / config.batch_size)


def trainable_with_views(
    model: onnx.ModelProto, sample_shapes: dict | None
) -> tuple[TrainableModel, list[WeightView]]:
    trainable = to_torch(model)
    shapes, batch = analysis_shapes(model, sample_shapes)
    return trainable, weight_views(trainable, model, find_layers(model, shapes, batch))


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
        data.x,
        data.y,
        config,
        teacher_logits=training.teacher,
        regularizer=regularizer,
        validation=(data.x_val, data.y_val, training.teacher_val),
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
    trainable, views = trainable_with_views(model, training.sample_shapes)
    hook = zero_masks(trainable, views) if keep_zeros else None
    tuned = TrainConfig(**{**config.__dict__, "epochs": epochs, "weight_decay": 0.0})
    result = run_training(trainable, training, tuned, "finetune", hooks, after_step=hook)
    return write_back(trainable, model), stage_summary(result)


def finish(
    result: CompressionResult,
    training: TrainingData | None,
    config: TrainConfig,
    epochs: int,
    hooks: Hooks,
    keep_zeros: bool,
) -> CompressionResult:
    """Every method's last step: fine-tune the compressed model when asked (and data allows)."""
    if epochs > 0 and training is not None:
        result.model, result.training["finetune"] = finetune(
            result.model, training, config, epochs, hooks, keep_zeros
        )
    return result


def stage_summary(result: TrainResult) -> dict[str, Any]:
    return {
        "seconds": round(result.seconds, 3),
        "steps": result.steps,
        "history": result.history,
        "resumed_from_epoch": result.resumed_from_epoch,
    }
