"""What a training run is given: its configuration, its data bound to the original model
(whose logits are the teacher), and the hooks to whoever runs it. Imports no torch, so
training-free methods and the command line can use these without loading it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import onnx

from compressors.errors import InvalidSpec
from compressors.intake.datasets import Dataset
from compressors.onnx import metrics


@dataclass
class TrainConfig:
    epochs: int = 5  # passes over the training split
    batch_size: int = 64  # samples per optimizer step
    lr: float = 1e-3  # Adam step size; also the proximal step size (see methods)
    seed: int = 0  # data order and any sampling noise
    distill: bool = False  # match the original model's softened logits (forced when unlabelled)
    temperature: float = 4.0  # softening for distillation, Hinton et al. 2015
    distill_weight: float = 0.5  # share of the KL term when labels are used too
    weight_decay: float = 0.0  # decoupled (AdamW); the l2 method sets it
    lr_schedule: str = "cosine"  # lr decays to 0 over the run (prox thresholds too), or "constant"
    device: str = "auto"  # "auto" picks CUDA when present
    strength: float | None = None  # the method's regularizer λ; None: the method's default
    strength_ramp: float = 0.0  # nuclear: share of the steps over which λ rises from 0
    prox_every: int | None = None  # nuclear: a fixed prox interval (None: adaptive, ADR 0003)
    output: str | None = None  # the output holding the class scores (None: found, compressors.onnx.outputs)


@dataclass
class TrainProgress:
    stage: str
    epoch: int
    epochs: int
    step: int
    steps: int  # per epoch
    loss: float
    regularizer: float
    eta_s: float
    metrics: dict[str, float] = field(default_factory=dict)  # val accuracy, rank, sparsity

    @property
    def fraction(self) -> float:
        return ((self.epoch - 1) * self.steps + self.step) / max(self.epochs * self.steps, 1)


@dataclass
class Hooks:
    """How a method talks to whoever runs it."""

    progress: Callable[[TrainProgress], None] | None = None
    should_stop: Callable[[], bool] | None = None
    checkpoint_dir: Path | None = None  # per-stage checkpoints live here; resumed when present


@dataclass
class TrainingData:
    """A dataset bound to the model it belongs to. The original model's logits (computed
    once, with onnxruntime, when first asked for) are the teacher for distillation and the
    only target when the dataset has no labels.

    ``output`` is the graph output whose scores are evaluated; ``logits`` the tensor training
    reads for it (the input of a final Softmax, else the output itself)."""

    model: onnx.ModelProto  # the original
    data: Dataset
    input_name: str
    output: str | None = None

    @classmethod
    def build(
        cls, model: onnx.ModelProto, data: Dataset | None, input_name: str, output: str | None = None
    ) -> TrainingData:
        if data is None:
            raise InvalidSpec("retraining methods need data: give --data digits or an .npz with x (and y).")
        return cls(model, data, input_name, output)

    @cached_property
    def scores(self) -> str:
        """The tensor whose scores are evaluated (``output``, or the one found)."""
        from compressors.onnx.outputs import score_output

        return score_output(self.model, self.output, self.data.num_classes)

    @cached_property
    def logits(self) -> str:
        from compressors.onnx.outputs import logits_of

        return logits_of(self.model, self.scores)

    @cached_property
    def _session(self) -> object:
        from compressors.onnx.outputs import up_to

        return metrics.session(up_to(self.model, self.logits), threads=2)

    @cached_property
    def teacher(self) -> np.ndarray:
        """The original model's logits on the training rows."""
        return metrics.predict(self._session, self.data.inputs())  # type: ignore[arg-type]

    @cached_property
    def teacher_val(self) -> np.ndarray:
        """... and on the validation rows."""
        return metrics.predict(self._session, self.data.inputs(val=True))  # type: ignore[arg-type]

    @property
    def sample_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = self.data.sample_shapes
        return shapes if self.data.names else {self.input_name: self.data.sample_shape}

    def steps(self, config: TrainConfig) -> int:
        """Optimizer steps in ``config.epochs`` passes over the training split."""
        return config.epochs * math.ceil(len(self.data.x) / config.batch_size)
