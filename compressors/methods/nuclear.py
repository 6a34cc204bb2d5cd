"""``nuclear``: trains with λ·Σ‖W‖* by proximal singular-value thresholding, then truncates.

Compression-aware training (Alvarez & Salzmann, NeurIPS 2017).

Objective: L(W) + λ Σ_l ‖W_l‖*, W_l the out × in matrix of layer l (conv kernels reshaped
to Cout × Cin·kh·kw), optimized by proximal singular-value thresholding after each
optimizer step (``compressors.training.prox.NuclearProx``, docs/adr/0003). After training,
layers are truncated by the shared rank rule (energy or target), as ``svd`` does.
"""

from __future__ import annotations

from compressors.intake.loading import LoadedModel
from compressors.methods.registry import RULES, Trained, Weights, register
from compressors.onnx.lowrank import factorize
from compressors.training.inputs import Hooks, TrainConfig, TrainingData


@register("nuclear", "structure", RULES, {"energy": 0.9}, strength=1.0, sweep=(0.3, 1.0, 3.0), weighs=True)
def train(model: LoadedModel, data: TrainingData | None, config: TrainConfig, hooks: Hooks) -> Trained:
    from compressors.training.prox import NuclearProx
    from compressors.training.retrain import retrain

    assert data is not None
    training = data

    def prox(trainable, views):  # type: ignore[no-untyped-def]
        return NuclearProx(
            trainable.module,
            views,
            float(config.strength or 0.0),
            config.prox_every,
            ramp=config.strength_ramp,
            total_steps=training.steps(config),
        )

    done = retrain(model.proto, data, config, hooks, prox)
    every = done.regularizer.every if isinstance(done.regularizer, NuclearProx) else None
    summary = {**done.summary, "prox_every": every, "ramp": config.strength_ramp}
    return Weights(done.model, data.sample_shapes, factorize, summary, calibration=data.data.x)
