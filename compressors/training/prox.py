"""Proximal regularizers: a step on the regularizer taken after each optimizer step on the loss.

- l1, λ Σ|w|: soft-thresholding, w ← sign(w)·max(|w| − lr·λ, 0), drives weights to exact zeros.
- group lasso, λ Σ_g ‖W_g‖₂ over output neurons/filters (with their bias and normalization
  scale and shift): W_g ← W_g · max(0, 1 − lr·λ/‖W_g‖) (Wen et al. 2016) switches whole
  groups off.
- nuclear norm, λ Σ_l ‖W_l‖*: singular-value soft-thresholding (below).

Objective: L(W) + λ Σ_l ‖W_l‖*, W_l the out × in matrix of layer l (conv kernels reshaped
to Cout × Cin·kh·kw). Optimized by proximal steps: after the optimizer's step on L, each
W_l is replaced by prox_{τ‖·‖*}(W_l) = U max(Σ − τ, 0) Vᵀ, singular-value soft-thresholding
(Cai, Candès & Shen 2010, Thm. 2.1), with τ = lr·λ per step elapsed since the last prox.

Cost. An exact SVD per matrix per step costs many training steps on big models. The prox
here thresholds through the eigendecomposition of the smaller Gram matrix G = W Wᵀ (or
WᵀW): G = U Σ² Uᵀ, and U diag(max(σ − τ, 0)/σ) Uᵀ W equals the SVT of W. Matrices of one
shape are stacked and decomposed in one batched fp64 ``eigh``. The prox then runs every k
steps, with k chosen from measured times so that prox time ≤ ``overhead`` (10%) of
training time (``prox_every`` fixes k instead): the first prox waits for three measured
steps, then k = ⌈prox time / (0.1 · median step time)⌉. The threshold covers the k steps
it stands for, so the total shrinkage per epoch does not depend on k. After training,
layers are truncated by the shared rank rule (energy or target).

Schedule. ``ramp`` > 0 raises λ linearly from 0 to its full value over that fraction of
the training steps, then holds it: λ(s) = λ · min(1, s / (ramp · total steps)). The
threshold of a prox is lr · Σ λ(s) over the steps it stands for.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import torch

from compressors.training.views import WeightView


class L1Prox:
    def __init__(self, module: torch.nn.Module, views: list[WeightView], strength: float) -> None:
        params = dict(module.named_parameters())
        self.weights = [params[v.param] for v in views]
        self.strength = strength

    def penalty(self) -> None:
        return None

    @torch.no_grad()
    def after_step(self, step: int, lr: float) -> None:
        tau = lr * self.strength
        for w in self.weights:
            w.copy_(torch.sign(w) * (w.abs() - tau).clamp_min(0))

    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        total = sum(w.numel() for w in self.weights)
        zeros = sum(int((w == 0).sum()) for w in self.weights)
        norm = sum(float(w.abs().sum()) for w in self.weights)
        return {"l1_norm": norm, "regularizer": self.strength * norm, "sparsity": zeros / max(total, 1)}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


class GroupLassoProx:
    def __init__(
        self,
        module: torch.nn.Module,
        views: list[WeightView],
        strength: float,
        affines: Mapping[str, list[str]] | None = None,
    ) -> None:
        """``affines`` maps a view's parameter to per-channel parameters in its groups."""
        self.params = dict(module.named_parameters())
        self.views = views
        self.strength = strength
        self.affines = {v.param: list((affines or {}).get(v.param, [])) for v in views}

    def penalty(self) -> None:
        return None

    def _rows(self, view: WeightView) -> torch.Tensor:
        rows = view.matrix(self.params[view.param].detach())
        extra = ([view.bias] if view.bias is not None else []) + self.affines[view.param]
        columns = [self.params[name].detach().reshape(-1, 1) for name in extra]
        return torch.cat([rows, *columns], dim=1) if columns else rows

    @torch.no_grad()
    def after_step(self, step: int, lr: float) -> None:
        tau = lr * self.strength
        for view in self.views:
            rows = self._rows(view)
            scale = (1 - tau / rows.norm(dim=1).clamp_min(1e-12)).clamp_min(0)
            weight = self.params[view.param]
            view.assign(weight, view.matrix(weight.detach()) * scale[:, None])
            for name in ([view.bias] if view.bias is not None else []) + self.affines[view.param]:
                self.params[name].mul_(scale)

    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        total = zero = 0
        norm = 0.0
        for view in self.views:
            norms = self._rows(view).norm(dim=1)
            total += len(norms)
            zero += int((norms == 0).sum())
            norm += float(norms.sum())
        return {"group_norm": norm, "regularizer": self.strength * norm, "groups_zero": zero / max(total, 1)}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


@torch.no_grad()
def singular_value_threshold(matrices: torch.Tensor, tau: float) -> torch.Tensor:
    """SVT of a batch (B, m, n) of matrices through the Gram matrix of the smaller side, fp64."""
    return _threshold(matrices, tau)[0]


def _threshold(matrices: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(SVT of the batch, its singular values after thresholding, ascending, fp64).

    The Gram matrix and its eigendecomposition are fp64: small singular values are square
    roots of small eigenvalues, which fp32 would lose next to the large ones. Applying the
    projection, U diag(scale) Uᵀ W, runs in the weights' own precision (at least fp32): its
    rounding is that of storing the result, and it is the costliest step."""
    wide = matrices.shape[-2] <= matrices.shape[-1]
    w = matrices if wide else matrices.transpose(-1, -2)
    w64 = w.double()
    eigenvalues, u = torch.linalg.eigh(w64 @ w64.transpose(-1, -2))
    sigma = eigenvalues.clamp_min(0).sqrt()
    scale = torch.where(sigma > tau, (sigma - tau) / sigma.clamp_min(1e-30), torch.zeros_like(sigma))
    work = torch.promote_types(matrices.dtype, torch.float32)
    u, w = u.to(work), w.to(work)
    shrunk = u @ (scale.to(work).unsqueeze(-1) * (u.transpose(-1, -2) @ w))
    out = shrunk if wide else shrunk.transpose(-1, -2)
    return out.to(matrices.dtype), (sigma - tau).clamp_min(0)


class NuclearProx:
    """λ Σ‖W‖* by proximal steps on the viewed weights (see module docstring)."""

    def __init__(
        self,
        module: torch.nn.Module,
        views: list[WeightView],
        strength: float,
        prox_every: int | None = None,
        overhead: float = 0.1,
        ramp: float = 0.0,
        total_steps: int = 0,
    ) -> None:
        if not 0.0 <= ramp <= 1.0:
            raise ValueError("ramp is a fraction of the training steps, between 0 and 1")
        self.params = dict(module.named_parameters())
        self.views = views
        self.strength = strength
        self.ramp_steps = ramp * total_steps
        self.fixed = prox_every
        self.every = prox_every or 1
        self.overhead = overhead
        self.last = 0  # step of the last prox
        self._step_clock = time.perf_counter()
        self._step_times: list[float] = []
        self._prox_seconds = 0.0
        self._spectra: list[torch.Tensor] | None = None  # σ per group after the last prox
        by_shape: dict[tuple[int, ...], list[WeightView]] = defaultdict(list)
        for view in views:
            by_shape[tuple(view.matrix(self.params[view.param]).shape)].append(view)
        self.groups = list(by_shape.values())

    def penalty(self) -> None:
        return None  # handled by the proximal step, not by the gradient

    def after_step(self, step: int, lr: float) -> None:
        now = time.perf_counter()
        self._step_times.append(now - self._step_clock)
        # with an adaptive interval, the first prox waits until three step times are known
        warming = self.fixed is None and len(self._step_times) < 3
        if not warming and step - self.last >= self.every:
            self.prox(lr * sum(self.strength_at(s) for s in range(self.last + 1, step + 1)))
            self.last = step
            self._prox_seconds = time.perf_counter() - now
            if self.fixed is None:
                recent = sorted(self._step_times[-20:])
                step_time = recent[len(recent) // 2]
                self.every = max(1, math.ceil(self._prox_seconds / (self.overhead * max(step_time, 1e-9))))
        self._step_clock = time.perf_counter()

    def strength_at(self, step: int) -> float:
        """λ in effect at optimizer step ``step`` (1-based)."""
        if self.ramp_steps <= 0:
            return self.strength
        return self.strength * min(1.0, step / self.ramp_steps)

    @torch.no_grad()
    def prox(self, tau: float) -> None:
        spectra = []
        for group in self.groups:
            stacked = torch.stack([v.matrix(self.params[v.param].detach()) for v in group])
            shrunk, sigma = _threshold(stacked, tau)
            spectra.append(sigma)
            for view, matrix in zip(group, shrunk, strict=True):
                view.assign(self.params[view.param], matrix)
        self._spectra = spectra

    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        """Once per epoch: ‖W‖* and the share of rank holding 90% of the energy, as of the
        last prox, from the singular values it left (free). Before any prox they come from
        the eigenvalues of the stacked Gram matrices (σ² = eig(W Wᵀ)), as dear as a prox."""
        norm = kept = full = 0.0
        for squares in self._squares():
            squares = squares.flip(-1)  # σ², descending
            norm += float(squares.sqrt().sum())
            energy = torch.cumsum(squares, -1) / squares.sum(-1, keepdim=True).clamp_min(1e-30)
            kept += float(((energy < 0.9).sum(-1) + 1).sum())
            full += squares.numel()
        return {
            "nuclear_norm": norm,
            "regularizer": self.strength * norm,
            "rank90_ratio": kept / max(full, 1),
            "prox_every": float(self.every),
        }

    def _squares(self) -> list[torch.Tensor]:
        """σ² per group, ascending: from the last prox, else computed now."""
        if self._spectra is not None:
            return [sigma.square() for sigma in self._spectra]
        squares = []
        for group in self.groups:
            stacked = torch.stack([v.matrix(self.params[v.param].detach()) for v in group]).double()
            wide = stacked.shape[-2] <= stacked.shape[-1]
            gram = stacked @ stacked.transpose(-1, -2) if wide else stacked.transpose(-1, -2) @ stacked
            squares.append(torch.linalg.eigvalsh(gram).clamp_min(0))
        return squares

    def state_dict(self) -> dict[str, Any]:
        return {"every": self.every, "last": self.last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.every, self.last = int(state["every"]), int(state["last"])
