"""``l1``: trains with λ·Σ|w| by soft-thresholding, then magnitude-prunes.

After each optimizer step w ← sign(w)·max(|w| − lr·λ, 0) (the prox of the l1 norm,
``compressors.training.prox.L1Prox``), which drives weights to exact zeros; pruning then
removes the rest by the rule, and optional fine-tuning keeps the zeros at zero.
"""

from __future__ import annotations

from compressors.intake.loading import LoadedModel
from compressors.methods.registry import Trained, Weights, register
from compressors.onnx.sparsity import magnitude_prune
from compressors.training.inputs import Hooks, TrainConfig, TrainingData

SPARSE_RULES = ("energy", "target_params")


@register("l1", "nonzeros", SPARSE_RULES, {"target_params": 0.25}, strength=1.0, sweep=(0.3, 1.0, 3.0))
def train(model: LoadedModel, data: TrainingData | None, config: TrainConfig, hooks: Hooks) -> Trained:
    from compressors.training.prox import L1Prox
    from compressors.training.retrain import retrain

    assert data is not None
    strength = float(config.strength or 0.0)
    sparse = retrain(model.proto, data, config, hooks, lambda t, views: L1Prox(t.module, views, strength))
    return Weights(sparse.model, data.sample_shapes, magnitude_prune, sparse.summary)
