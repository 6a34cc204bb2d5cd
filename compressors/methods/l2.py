"""``l2``: trains with weight decay (AdamW, coefficient λ), then truncates.

The baseline the paper omitted.

Decoupled weight decay (AdamW, Loshchilov & Hutter 2019) with coefficient ``strength`` on
every trainable weight; then the same truncation as ``nuclear`` and ``svd``.
"""

from __future__ import annotations

from dataclasses import replace

from compressors.intake.loading import LoadedModel
from compressors.methods.registry import RULES, Trained, Weights, register
from compressors.onnx.lowrank import factorize
from compressors.training.inputs import Hooks, TrainConfig, TrainingData


@register("l2", "structure", RULES, {"energy": 0.9}, strength=0.01, sweep=(1e-3, 1e-2, 1e-1), weighs=True)
def train(model: LoadedModel, data: TrainingData | None, config: TrainConfig, hooks: Hooks) -> Trained:
    from compressors.training.retrain import retrain

    assert data is not None
    decayed = retrain(model.proto, data, replace(config, weight_decay=config.strength or 0.0), hooks, _none)
    return Weights(decayed.model, data.sample_shapes, factorize, decayed.summary, calibration=data.data.x)


def _none(*_: object) -> None:
    return None  # weight decay is the optimizer's; no regularizer of its own
