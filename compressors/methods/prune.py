"""``prune``: training-free magnitude pruning.

Fine-tuning after it keeps the zeros at zero (``compressors.onnx.sparsity``).
"""

from __future__ import annotations

from compressors.intake.loading import LoadedModel
from compressors.methods.registry import Trained, Weights, register
from compressors.onnx.sparsity import magnitude_prune
from compressors.training.inputs import Hooks, TrainConfig, TrainingData


@register("prune", "nonzeros", ("energy", "target_params"), {"target_params": 0.25})
def train(model: LoadedModel, data: TrainingData | None, config: TrainConfig, hooks: Hooks) -> Trained:
    return Weights(model.proto, data.sample_shapes if data else None, magnitude_prune)
