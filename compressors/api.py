"""What the front door adds to the layers behind it: a model's description with the
retraining verdict filled in."""

from __future__ import annotations

from dataclasses import replace

from compressors.intake.loading import LoadedModel
from compressors.onnx.inspection import ModelInfo


def inspect_model(model: LoadedModel, retraining: bool = True) -> ModelInfo:
    """What ``model`` is: inputs, outputs, params, MACs, layers, and (unless ``retraining``
    is False) whether it can be retrained and why not. The verdict asks the ONNX → torch
    converter, so it is the one part of inspection that loads torch."""
    if not retraining:
        return model.info
    from compressors.training.prepare import check_retrainable

    ok, why = check_retrainable(model.proto)
    return replace(model.info, retrainable=ok, retrainable_reason=why)
