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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from compressors.errors import JobCancelled


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


def train(
    module: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray | None,
    config: TrainConfig,
    teacher_logits: np.ndarray | None = None,
    regularizer: Regularizer | None = None,
    validation: tuple[np.ndarray, np.ndarray | None, np.ndarray | None] | None = None,
    stage: str = "train",
    progress: Callable[[TrainProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint: Path | None = None,
    after_step: Callable[[], None] | None = None,
) -> TrainResult:
    """Train ``module`` in place on (x, y) and/or teacher logits.

    ``validation`` is (x_val, y_val, teacher_val): accuracy when labelled, else agreement
    with the teacher. ``after_step`` runs after each optimizer step (pruning masks)."""
    if y is None and teacher_logits is None:
        raise ValueError("training needs labels or teacher logits")
    device = pick_device(config.device)
    module.to(device).eval()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    xs = torch.from_numpy(x)
    ys = torch.from_numpy(y) if y is not None else None
    ts = torch.from_numpy(teacher_logits) if teacher_logits is not None else None
    use_kl = ts is not None and (config.distill or ys is None)
    steps = math.ceil(len(xs) / config.batch_size)
    history: list[dict[str, float]] = []
    start_epoch = 1
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        module.load_state_dict(state["module"])
        optimizer.load_state_dict(state["optimizer"])
        if regularizer is not None:
            regularizer.load_state_dict(state["regularizer"])
        history = state["history"]
        start_epoch = int(state["epoch"]) + 1
    began = time.perf_counter()
    done_steps = 0
    total_steps = (config.epochs - start_epoch + 1) * steps
    for epoch in range(start_epoch, config.epochs + 1):
        order = torch.randperm(
            len(xs), generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        )
        torch.manual_seed(config.seed * 100_003 + epoch)  # sampling noise (variational) per epoch
        loss_sum = reg_sum = 0.0
        for step in range(1, steps + 1):
            if should_stop is not None and should_stop():
                raise JobCancelled("the job was cancelled.")
            idx = order[(step - 1) * config.batch_size : step * config.batch_size]
            out = module(xs[idx].to(device))
            loss = torch.zeros((), device=device)
            if ys is not None:
                loss = F.cross_entropy(out, ys[idx].to(device))
            if use_kl:
                assert ts is not None
                kl = distillation_loss(out, ts[idx].to(device), config.temperature)
                loss = kl if ys is None else (1 - config.distill_weight) * loss + config.distill_weight * kl
            penalty = regularizer.penalty() if regularizer is not None else None
            total = loss if penalty is None else loss + penalty
            global_step = (epoch - 1) * steps + step
            lr = learning_rate(config, global_step, config.epochs * steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            if regularizer is not None:
                regularizer.after_step(global_step, lr)
            if after_step is not None:
                after_step()
            loss_sum += loss.item()
            reg_sum += penalty.item() if penalty is not None else 0.0
            done_steps += 1
            if progress is not None:
                elapsed = time.perf_counter() - began
                eta = elapsed / done_steps * (total_steps - done_steps)
                progress(
                    TrainProgress(
                        stage,
                        epoch,
                        config.epochs,
                        step,
                        steps,
                        loss.item(),
                        penalty.item() if penalty is not None else 0.0,
                        eta,
                    )
                )
        record = {"epoch": float(epoch), "loss": loss_sum / steps, "penalty": reg_sum / steps}
        if regularizer is not None:
            record.update(regularizer.stats())
        if validation is not None:
            record.update(evaluate(module, *validation, device=device))
        history.append(record)
        if progress is not None:
            elapsed = time.perf_counter() - began
            eta = elapsed / max(done_steps, 1) * (total_steps - done_steps)
            progress(
                TrainProgress(
                    stage,
                    epoch,
                    config.epochs,
                    steps,
                    steps,
                    record["loss"],
                    record["penalty"],
                    eta,
                    {k: v for k, v in record.items() if k != "epoch"},
                )
            )
        if checkpoint is not None:
            _save(
                checkpoint,
                {
                    "epoch": epoch,
                    "module": module.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "regularizer": regularizer.state_dict() if regularizer is not None else {},
                    "history": history,
                    "config": asdict(config),
                },
            )
    module.cpu()
    return TrainResult(history, time.perf_counter() - began, done_steps, start_epoch - 1)


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
    module: torch.nn.Module, x: np.ndarray, device: torch.device | None = None, batch: int = 512
) -> np.ndarray:
    device = device or next(module.parameters()).device
    outs = [
        module(torch.from_numpy(x[i : i + batch]).to(device)).float().cpu() for i in range(0, len(x), batch)
    ]
    return torch.cat(outs).numpy()


@torch.no_grad()
def evaluate(
    module: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray | None,
    teacher: np.ndarray | None,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Validation accuracy when labelled; otherwise top-1 agreement with the teacher."""
    logits = predict(module, x, device)
    if y is not None:
        return {"val_accuracy": float((logits.argmax(1) == y).mean())}
    assert teacher is not None
    return {"val_agreement": float((logits.argmax(1) == teacher.argmax(1)).mean())}
