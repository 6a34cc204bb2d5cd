"""Typed refusals. Every error a user can hit carries a stable ``kind`` and one sentence.

The service maps ``kind`` to a problem+json ``type`` URI; the CLI prints ``str(error)`` as its
one line on stderr and exits 2. Messages say what was wrong and what to do next.
"""

from __future__ import annotations


class ModelpressError(Exception):
    """Base class: ``kind`` is a stable slug, the message is one sentence for a person."""

    kind = "modelpress-error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ModelRejected(ModelpressError):
    """The model file is unreadable, unsafe, or not a model we can work on."""

    kind = "model-rejected"


class ModelTooLarge(ModelRejected):
    kind = "model-too-large"


class UnsafeArchive(ModelRejected):
    kind = "unsafe-archive"


class UnsafeExternalData(ModelRejected):
    kind = "unsafe-external-data"


class DatasetRejected(ModelpressError):
    """The dataset does not fit the model (shape, dtype, labels) or is not a plain .npz."""

    kind = "dataset-rejected"


class InvalidSpec(ModelpressError):
    """The compression request cannot be satisfied as asked (e.g. an unreachable target)."""

    kind = "invalid-spec"


class NotRetrainable(ModelpressError):
    """The graph cannot be turned into a trainable module."""

    kind = "not-retrainable"


class JobCancelled(ModelpressError):
    kind = "job-cancelled"


class TrainingDiverged(ModelpressError):
    """A loss or a weight stopped being finite while training."""

    kind = "training-diverged"
