"""``svd``: training-free truncated SVD of every eligible Gemm/MatMul/Conv.

A layer is factorized only when that lowers its cost (``compressors.onnx.lowrank``).
"""

from __future__ import annotations

from compressors.intake.loading import LoadedModel
from compressors.methods.registry import RULES, Trained, Weights, register
from compressors.onnx.lowrank import factorize
from compressors.training.inputs import Hooks, TrainConfig, TrainingData


@register("svd", "structure", RULES, {"energy": 0.9}, weighs=True)
def train(model: LoadedModel, data: TrainingData | None, config: TrainConfig, hooks: Hooks) -> Trained:
    if data is None:
        return Weights(model.proto, None, factorize)
    return Weights(model.proto, data.sample_shapes, factorize, calibration=data.data.x)
