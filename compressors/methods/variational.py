"""``variational``: sparse variational dropout (log α per weight), prunes log α > 3.

Sparse variational dropout (Molchanov, Ashukha & Vetrov, ICML 2017) is the
practical modern form of the description-length view of Graves (2011). Weights with
log α > 3 are pruned, or those with the largest log α until a nonzeros target is met
(``compressors.training.variational``).
"""

from __future__ import annotations

from compressors.intake.loading import LoadedModel
from compressors.methods.registry import Trained, register
from compressors.training.inputs import Hooks, TrainConfig, TrainingData


@register("variational", "nonzeros", ("target_params",), None, strength=0.1, sweep=(0.03, 0.1, 0.3))
def train(model: LoadedModel, data: TrainingData | None, config: TrainConfig, hooks: Hooks) -> Trained:
    from compressors.training.variational import train_variational

    assert data is not None
    return train_variational(model.proto, data, config, hooks)
