"""The training loop every retraining method shares: seeded, resumable, cancellable.

Data order is a function of (seed, epoch) only, and the per-epoch checkpoint holds the
module, the optimizer and the regularizer's state, so a job restarted from a checkpoint
ends with the same weights as one that never stopped. Normalization layers are kept in
eval mode: fine-tuning a compressed model on a small dataset should not re-estimate the
statistics the model was exported with.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from compressors.errors import JobCancelled, TrainingDiverged
from compressors.training.inputs import TrainConfig, TrainProgress


class Regularizer(Protocol):
    """A penalty added to the loss and/or a proximal step taken after optimizer steps."""

    def penalty(self) -> torch.Tensor | None: ...

    def after_step(self, step: int, lr: float) -> None: ...

    def stats(self) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainResult:
    history: list[dict[str, float]]
    seconds: float
    steps: int
    resumed_from_epoch: int


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher ‖ student) on temperature-softened logits, scaled by T² (Hinton et al. 2015,
    §2) so its gradients keep their size as T changes."""
    t = temperature
    return F.kl_div(
        F.log_softmax(student / t, dim=1),
        F.log_softmax(teacher / t, dim=1),
        log_target=True,
        reduction="batchmean",
    ) * (t * t)


Inputs = np.ndarray | Sequence[np.ndarray]  # one array per model input, in graph order


def train(
    module: torch.nn.Module,
    x: Inputs,
    y: np.ndarray | None,
    config: TrainConfig,
    teacher_logits: np.ndarray | None = None,
    regularizer: Regularizer | None = None,
    validation: tuple[Inputs, np.ndarray | None, np.ndarray | None] | None = None,
    stage: str = "train",
    progress: Callable[[TrainProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint: Path | None = None,
    after_step: Callable[[], None] | None = None,
) -> TrainResult:
    """Train ``module`` in place on (x, y) and/or teacher logits.

    ``validation`` is (x_val, y_val, teacher_val): accuracy when labelled, else agreement
    with the teacher. ``after_step`` runs after each optimizer step (pruning masks). A loss
    or a weight that stops being finite raises ``TrainingDiverged``."""
    device = pick_device(config.device)
    module.to(device).eval()
    batches = Batches(x, y, teacher_logits, config, device)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    history, start_epoch = _resume(checkpoint, module, optimizer, regularizer, device)
    meter = _Meter(stage, config.epochs, batches.steps, (config.epochs - start_epoch + 1) * batches.steps)
    for epoch in range(start_epoch, config.epochs + 1):
        torch.manual_seed(config.seed * 100_003 + epoch)  # sampling noise (variational) per epoch
        sums = np.zeros(2)
        for step, (inputs, labels, teacher) in enumerate(batches.epoch(epoch), start=1):
            if should_stop is not None and should_stop():
                raise JobCancelled("the job was cancelled.")
            loss, penalty = batch_loss(module, inputs, labels, teacher, config, regularizer)
            _check_finite(module, loss + penalty, epoch, step)
            global_step = (epoch - 1) * batches.steps + step
            lr = learning_rate(config, global_step, config.epochs * batches.steps)
            _optimizer_step(optimizer, loss + penalty, lr)
            if regularizer is not None:
                regularizer.after_step(global_step, lr)
            if after_step is not None:
                after_step()
            figures = (loss.item(), penalty.item())
            sums += figures
            meter.emit(progress, epoch, step, figures)
        _check_weights(module, epoch)
        history.append(_epoch_record(module, epoch, sums / batches.steps, regularizer, validation, device))
        meter.emit(progress, epoch, batches.steps, history[-1])
        if checkpoint is not None:
            _save(checkpoint, _checkpoint_state(epoch, module, optimizer, regularizer, history, config))
    module.cpu()
    return TrainResult(history, meter.elapsed(), meter.done, start_epoch - 1)


class Batches:
    """The training split as shuffled batches: the order depends on (seed, epoch) only."""

    def __init__(
        self,
        x: Inputs,
        y: np.ndarray | None,
        teacher: np.ndarray | None,
        config: TrainConfig,
        device: torch.device,
    ) -> None:
        if y is None and teacher is None:
            raise ValueError("training needs labels or teacher logits")
        self.xs = [torch.from_numpy(a) for a in _as_list(x)]
        self.y = torch.from_numpy(y) if y is not None else None
        # the teacher is only used when distilling, which is forced without labels
        use_kl = teacher is not None and (config.distill or y is None)
        self.teacher = torch.from_numpy(teacher) if use_kl and teacher is not None else None
        self.config, self.device = config, device
        self.rows = len(self.xs[0])
        self.steps = math.ceil(self.rows / config.batch_size)

    def epoch(
        self, epoch: int
    ) -> Iterator[tuple[list[torch.Tensor], torch.Tensor | None, torch.Tensor | None]]:
        size = self.config.batch_size
        order = torch.randperm(
            self.rows, generator=torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        )
        for start in range(0, self.rows, size):
            idx = order[start : start + size]
            yield (
                [a[idx].to(self.device) for a in self.xs],
                None if self.y is None else self.y[idx].to(self.device),
                None if self.teacher is None else self.teacher[idx].to(self.device),
            )


def _as_list(x: Inputs) -> list[np.ndarray]:
    return [x] if isinstance(x, np.ndarray) else list(x)


def _rows(out: torch.Tensor, labels: torch.Tensor | None, teacher: torch.Tensor | None) -> tuple:
    """Per-position scores (N, seq, C) as N·seq rows, with their labels and teacher scores."""
    if out.ndim <= 2:
        return out, labels, teacher
    rows = out.reshape(-1, out.shape[-1])
    return (
        rows,
        None if labels is None else labels.reshape(-1),
        None if teacher is None else teacher.reshape(-1, teacher.shape[-1]),
    )


def batch_loss(
    module: torch.nn.Module,
    inputs: torch.Tensor | Sequence[torch.Tensor],
    labels: torch.Tensor | None,
    teacher: torch.Tensor | None,
    config: TrainConfig,
    regularizer: Regularizer | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(data loss, regularizer penalty) of one batch: cross-entropy on labels, the
    distillation KL on teacher logits, or their mix weighted by ``distill_weight``. A language
    model's (N, seq, vocab) scores count each position as a sample (labels shaped (N, seq))."""
    out = module(*inputs) if isinstance(inputs, (list, tuple)) else module(inputs)
    out, labels, teacher = _rows(out, labels, teacher)
    loss = torch.zeros((), device=out.device)
    if labels is not None:
        loss = F.cross_entropy(out, labels)
    if teacher is not None:
        kl = distillation_loss(out, teacher, config.temperature)
        loss = kl if labels is None else (1 - config.distill_weight) * loss + config.distill_weight * kl
    penalty = regularizer.penalty() if regularizer is not None else None
    return loss, torch.zeros((), device=out.device) if penalty is None else penalty


def _optimizer_step(optimizer: torch.optim.Optimizer, total: torch.Tensor, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()


def _check_finite(module: torch.nn.Module, total: torch.Tensor, epoch: int, step: int) -> None:
    if bool(torch.isfinite(total)):
        return
    broken = _non_finite_weights(module)
    cause = (
        f"weights {', '.join(broken[:3])} went non-finite" if broken else f"the loss became {total.item()}"
    )
    raise TrainingDiverged(
        f"training diverged: {cause} at epoch {epoch}, step {step}; lower lr or strength and try again."
    )


def _check_weights(module: torch.nn.Module, epoch: int) -> None:
    broken = _non_finite_weights(module)
    if broken:
        raise TrainingDiverged(
            f"training diverged: weights {', '.join(broken[:3])} went non-finite in epoch {epoch}; "
            "lower lr or strength and try again."
        )


@torch.no_grad()
def _non_finite_weights(module: torch.nn.Module) -> list[str]:
    return [name for name, p in module.named_parameters() if not bool(torch.isfinite(p).all())]


def _epoch_record(
    module: torch.nn.Module,
    epoch: int,
    means: np.ndarray,
    regularizer: Regularizer | None,
    validation: tuple[Inputs, np.ndarray | None, np.ndarray | None] | None,
    device: torch.device,
) -> dict[str, float]:
    record = {"epoch": float(epoch), "loss": float(means[0]), "penalty": float(means[1])}
    if regularizer is not None:
        record.update(regularizer.stats())
    if validation is not None:
        record.update(evaluate(module, *validation, device=device))
    return record


class _Meter:
    """Counts steps and times them, and is the one place that builds ``TrainProgress``."""

    def __init__(self, stage: str, epochs: int, steps: int, total_steps: int) -> None:
        self.stage, self.epochs, self.steps, self.total = stage, epochs, steps, total_steps
        self.began = time.perf_counter()
        self.done = 0

    def elapsed(self) -> float:
        return time.perf_counter() - self.began

    def emit(
        self,
        progress: Callable[[TrainProgress], None] | None,
        epoch: int,
        step: int,
        figures: tuple[float, float] | dict[str, float],
    ) -> None:
        """After a step (figures: that batch's loss and penalty) or an epoch (its record)."""
        if isinstance(figures, dict):
            loss, penalty = figures["loss"], figures["penalty"]
            extra = {k: v for k, v in figures.items() if k != "epoch"}
        else:
            self.done += 1
            loss, penalty = figures
            extra = {}
        if progress is None:
            return
        eta = self.elapsed() / max(self.done, 1) * (self.total - self.done)
        progress(TrainProgress(self.stage, epoch, self.epochs, step, self.steps, loss, penalty, eta, extra))


def _resume(
    checkpoint: Path | None,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    regularizer: Regularizer | None,
    device: torch.device,
) -> tuple[list[dict[str, float]], int]:
    """(history so far, first epoch to run): from the checkpoint when there is one."""
    if checkpoint is None or not checkpoint.exists():
        return [], 1
    state = torch.load(checkpoint, map_location=device, weights_only=True)
    module.load_state_dict(state["module"])
    optimizer.load_state_dict(state["optimizer"])
    if regularizer is not None:
        regularizer.load_state_dict(state["regularizer"])
    return state["history"], int(state["epoch"]) + 1


def _checkpoint_state(
    epoch: int,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    regularizer: Regularizer | None,
    history: list[dict[str, float]],
    config: TrainConfig,
) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "module": module.state_dict(),
        "optimizer": optimizer.state_dict(),
        "regularizer": regularizer.state_dict() if regularizer is not None else {},
        "history": history,
        "config": asdict(config),
    }


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """The step size of optimizer step ``step`` (1-based) out of ``total_steps``."""
    if config.lr_schedule == "constant":
        return config.lr
    if config.lr_schedule == "cosine":
        return 0.5 * config.lr * (1.0 + math.cos(math.pi * (step - 1) / max(total_steps, 1)))
    raise ValueError(f"unknown lr_schedule {config.lr_schedule!r}; use constant or cosine")


def _save(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


@torch.no_grad()
def predict(
    module: torch.nn.Module, x: Inputs, device: torch.device | None = None, batch: int = 512
) -> np.ndarray:
    device = device or next(module.parameters()).device
    arrays = _as_list(x)
    outs = [
        module(*(torch.from_numpy(a[i : i + batch]).to(device) for a in arrays)).float().cpu()
        for i in range(0, len(arrays[0]), batch)
    ]
    return torch.cat(outs).numpy()


@torch.no_grad()
def evaluate(
    module: torch.nn.Module,
    x: Inputs,
    y: np.ndarray | None,
    teacher: np.ndarray | None,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Validation accuracy when labelled; otherwise top-1 agreement with the teacher."""
    logits = predict(module, x, device)
    logits = logits.reshape(-1, logits.shape[-1]) if logits.ndim > 2 else logits.reshape(len(logits), -1)
    y = None if y is None else y.reshape(-1)
    teacher = None if teacher is None else teacher.reshape(-1, teacher.shape[-1])
    if y is not None:
        return {"val_accuracy": float((logits.argmax(1) == y).mean())}
    assert teacher is not None
    return {"val_agreement": float((logits.argmax(1) == teacher.argmax(1)).mean())}
