"""``l1``: fine-tune with λ Σ|w| by proximal soft-thresholding, then magnitude-prune.

After each optimizer step w ← sign(w)·max(|w| − lr·λ, 0) (the prox of the l1 norm), which
drives weights to exact zeros; pruning then removes the rest by the rule, and optional
fine-tuning keeps the zeros at zero.
"""

from __future__ import annotations

from typing import Any

import onnx
import torch

from compressors.intake.loading import LoadedModel
from compressors.onnx.inspection import analysis_shapes
from compressors.onnx.ranks import RankRule
from compressors.onnx.result import CompressionResult
from compressors.onnx.sparsity import magnitude_prune
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
from compressors.training.views import WeightView


class L1Prox:
    def __init__(self, module: torch.nn.Module, views: list[WeightView], strength: float) -> None:
        params = dict(module.named_parameters())
        self.weights = [params[v.param] for v in views]
        self.strength = strength

    def penalty(self) -> None:
        return None

    @torch.no_grad()
    def after_step(self, step: int, lr: float) -> None:
        tau = lr * self.strength
        for w in self.weights:
            w.copy_(torch.sign(w) * (w.abs() - tau).clamp_min(0))

    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        total = sum(w.numel() for w in self.weights)
        zeros = sum(int((w == 0).sum()) for w in self.weights)
        norm = sum(float(w.abs().sum()) for w in self.weights)
        return {"l1_norm": norm, "regularizer": self.strength * norm, "sparsity": zeros / max(total, 1)}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


def train_l1(
    model: LoadedModel, training: TrainingData, config: TrainConfig, strength: float, hooks: Hooks
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The user's graph with weights trained under the l1 prox, and the stage's summary."""
    trainable, views = trainable_with_views(model.proto, training.sample_shapes)
    prox = L1Prox(trainable.module, views, strength)
    trained = run_training(trainable, training, config, "train", hooks, prox)
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
    sparse, summary = train_l1(model, training, config, strength, hooks)
    shapes, batch = analysis_shapes(sparse, training.sample_shapes)
    result = magnitude_prune(sparse, shapes, rule, batch)
    result.training = {"train": summary}
    return finish(result, training, config, finetune_epochs, hooks, keep_zeros=True)
