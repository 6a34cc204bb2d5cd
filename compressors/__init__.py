"""modelpress's library: ONNX model and data in, a smaller ONNX model and an honest report out.

The front door. Callers use what is listed here and nothing behind it::

    from compressors import Target, compress, load_dataset, load_model

    model = load_model(Path("model.zip"), Path("work"))
    data = load_dataset("digits", model.info.inputs[0])
    done = compress(model, "nuclear", Target(0.25, "macs"), data)
    done.write(Path("out"))  # model.onnx, report.json

Nothing here imports torch: a retraining method loads it when it trains, and
``inspect_model`` when it asks the converter whether the model can be retrained.
"""

from __future__ import annotations

from compressors.api import inspect_model
from compressors.curves import DEFAULT_TARGETS, Curve, Point, SweepSpec, sweep, write_curve
from compressors.errors import (
    DatasetRejected,
    InvalidSpec,
    JobCancelled,
    ModelpressError,
    ModelRejected,
    ModelTooLarge,
    NotRetrainable,
    TrainingDiverged,
    UnsafeArchive,
    UnsafeExternalData,
)
from compressors.intake.datasets import HOLDOUT, MAX_DATASET_BYTES, Dataset, load_dataset
from compressors.intake.loading import Limits, LoadedModel, load_model
from compressors.intake.npz import describe as describe_dataset
from compressors.methods import METHODS, RULES, WEIGHTINGS, Method, Weighting
from compressors.onnx.inspection import ModelInfo
from compressors.onnx.quantize import QUANTIZE_MODES, Quantize
from compressors.onnx.ranks import Energy, RankRule, Target
from compressors.pipeline import Compressed, CompressOptions, Evaluation, Progress, Stages, compress
from compressors.report import SCHEMA_VERSION, Report, finite, library_versions, strict_json, summary_rows
from compressors.training.inputs import Hooks, TrainConfig, TrainingData, TrainProgress

__all__ = [
    "DEFAULT_TARGETS",
    "HOLDOUT",
    "MAX_DATASET_BYTES",
    "METHODS",
    "QUANTIZE_MODES",
    "RULES",
    "SCHEMA_VERSION",
    "WEIGHTINGS",
    "CompressOptions",
    "Compressed",
    "Curve",
    "Dataset",
    "DatasetRejected",
    "Energy",
    "Evaluation",
    "Hooks",
    "InvalidSpec",
    "JobCancelled",
    "Limits",
    "LoadedModel",
    "Method",
    "ModelInfo",
    "ModelRejected",
    "ModelTooLarge",
    "ModelpressError",
    "NotRetrainable",
    "Point",
    "Progress",
    "Quantize",
    "RankRule",
    "Report",
    "Stages",
    "SweepSpec",
    "Target",
    "TrainConfig",
    "TrainProgress",
    "TrainingData",
    "TrainingDiverged",
    "UnsafeArchive",
    "UnsafeExternalData",
    "Weighting",
    "compress",
    "describe_dataset",
    "finite",
    "inspect_model",
    "library_versions",
    "load_dataset",
    "load_model",
    "strict_json",
    "summary_rows",
    "sweep",
    "write_curve",
]
