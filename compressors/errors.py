"""Typed refusals. Every error a user can hit carries a stable ``kind`` and one sentence.

The service maps ``kind`` to a problem+json ``type`` URI; the CLI prints ``str(error)`` as its
one line on stderr and exits 2. Messages say what was wrong and what to do next.
"""

from __future__ import annotations

from typing import Any


class ModelpressError(Exception):
    """Base class: ``kind`` is a stable slug, the message is one sentence for a person.
    A subclass names its kind in its bases: ``class X(ModelpressError, kind="x")``."""

    kind = "modelpress-error"

    def __init_subclass__(cls, kind: str = "", **options: Any) -> None:
        super().__init_subclass__(**options)
        cls.kind = kind or cls.kind

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ModelRejected(ModelpressError, kind="model-rejected"):
    """The model file is unreadable, unsafe, or not a model we can work on."""


class ModelTooLarge(ModelRejected, kind="model-too-large"):
    """The file, an archive member, a declared tensor or the parse is over its limit."""


class UnsafeArchive(ModelRejected, kind="unsafe-archive"):
    """A .zip bundle with links, paths outside itself, encryption or a bomb's ratios."""


class UnsafeExternalData(ModelRejected, kind="unsafe-external-data"):
    """External data that is missing, a link, or outside the model's folder."""


class DatasetRejected(ModelpressError, kind="dataset-rejected"):
    """The dataset does not fit the model (shape, dtype, labels) or is not a plain .npz."""


class InvalidSpec(ModelpressError, kind="invalid-spec"):
    """The compression request cannot be satisfied as asked (e.g. an unreachable target)."""


class NotRetrainable(ModelpressError, kind="not-retrainable"):
    """The graph cannot be turned into a trainable module."""


class JobCancelled(ModelpressError, kind="job-cancelled"):
    """The job was cancelled while it ran."""


class TrainingDiverged(ModelpressError, kind="training-diverged"):
    """A loss or a weight stopped being finite while training."""
