"""Sparse variational dropout (Molchanov, Ashukha & Vetrov, ICML 2017).

Each weight gets a Gaussian posterior N(θ, σ²) with α = σ²/θ² under the log-uniform prior;
the ELBO's KL term is the paper's approximation (Eq. 14):
    −KL ≈ k1·sigmoid(k2 + k3·log α) − 0.5·log(1 + 1/α) − k1,  k1, k2, k3 = 0.63576, 1.87320, 1.48695.
Linear and Conv layers use the local reparameterization trick (Kingma et al. 2015): the
pre-activation is sampled as N(x·θ, x²·σ²). Weights held outside a torch layer (MatMul
weights) use additive weight noise, θ + σ·ε per batch, the same posterior with more gradient
variance. After training, weights with log α > 3 (dropout rate above ~95%) are pruned; with
``target_params`` the weights with the largest log α are pruned until the target is met.
This is the description-length view of Graves (2011) in its practical modern form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import onnx
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from compressors.errors import InvalidSpec
from compressors.onnx.inspection import analysis_shapes
from compressors.onnx.macs import count_params
from compressors.onnx.ranks import RankRule, Target
from compressors.onnx.result import CompressionResult
from compressors.onnx.sparsity import count_nonzeros
from compressors.training.convert import TrainableModel, write_back
from compressors.training.inputs import Hooks, TrainConfig, TrainingData
from compressors.training.retrain import run_training, stage_summary, trainable_with_views
from compressors.training.views import WeightView

K1, K2, K3 = 0.63576, 1.87320, 1.48695
LOG_ALPHA_THRESHOLD = 3.0


def kl_approximation(log_alpha: torch.Tensor) -> torch.Tensor:
    """KL(q ‖ p) per weight, Molchanov et al. 2017, Eq. 14 (the constant C = −k1 makes KL → 0
    as α → ∞)."""
    return -(K1 * torch.sigmoid(K2 + K3 * log_alpha) - 0.5 * F.softplus(-log_alpha) - K1)


def _log_alpha(theta: torch.Tensor, log_sigma2: torch.Tensor) -> torch.Tensor:
    return (log_sigma2 - torch.log(theta * theta + 1e-8)).clamp(-10.0, 10.0)


class VariationalLayer(nn.Module):
    """A Linear or Conv layer with a per-weight log σ². Sampling happens whenever gradients
    are on (training); under ``torch.no_grad`` it is the mean network with pruning applied."""

    def __init__(self, layer: nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d) -> None:
        super().__init__()
        self.layer = layer
        self.weight = layer.weight  # same Parameter object: the name the ONNX binding knows
        self.bias = layer.bias
        self.log_sigma2 = nn.Parameter(torch.full_like(layer.weight, -10.0))

    def _call(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, weight, bias)
        conv = self.layer
        fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[weight.dim() - 2]
        return fn(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)  # type: ignore[operator]

    def log_alpha(self) -> torch.Tensor:
        return _log_alpha(self.weight, self.log_sigma2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            mask = (self.log_alpha() < LOG_ALPHA_THRESHOLD).to(self.weight.dtype)
            return self._call(x, self.weight * mask, self.bias)
        mean = self._call(x, self.weight, self.bias)
        variance = self._call(x * x, torch.exp(self.log_sigma2), None)
        return mean + torch.sqrt(variance + 1e-8) * torch.randn_like(mean)


class WeightNoise(nn.Module):
    """Parametrization θ ↦ θ + σ·ε for weights outside torch layers."""

    def __init__(self, like: torch.Tensor) -> None:
        super().__init__()
        self.log_sigma2 = nn.Parameter(torch.full_like(like, -10.0))

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            mask = (_log_alpha(theta, self.log_sigma2) < LOG_ALPHA_THRESHOLD).to(theta.dtype)
            return theta * mask
        return theta + torch.exp(0.5 * self.log_sigma2) * torch.randn_like(theta)


class VariationalKL:
    """The KL term of the ELBO, per training sample, warmed up linearly over the first
    ``warmup_steps`` (Molchanov et al. §5)."""

    def __init__(
        self, pairs: list[tuple[torch.Tensor, torch.Tensor]], samples: int, strength: float, warmup_steps: int
    ) -> None:
        self.pairs = pairs  # (θ, log σ²)
        self.samples = samples
        self.strength = strength
        self.warmup = max(warmup_steps, 1)
        self.step = 0

    def penalty(self) -> torch.Tensor:
        kl = sum(kl_approximation(_log_alpha(t, s)).sum() for t, s in self.pairs)
        weight = min(1.0, self.step / self.warmup)
        return self.strength * weight * kl / self.samples  # type: ignore[return-value]

    def after_step(self, step: int, lr: float) -> None:
        self.step = step

    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        total = sum(t.numel() for t, _ in self.pairs)
        pruned = sum(int((_log_alpha(t, s) >= LOG_ALPHA_THRESHOLD).sum()) for t, s in self.pairs)
        return {"sparsity": pruned / max(total, 1)}

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])


def make_variational(trainable: TrainableModel, views: list[WeightView]) -> list[tuple[str, nn.Module, str]]:
    """Swap layers for variational ones; returns (param name, owner, attribute) per weight."""
    module = trainable.module
    owners: list[tuple[str, nn.Module, str]] = []
    for view in views:
        owner_name, _, attr = view.param.rpartition(".")
        owner = module.get_submodule(owner_name)
        if isinstance(owner, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d) and attr == "weight":
            parent_name, _, child = owner_name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            wrapped = VariationalLayer(owner)
            setattr(parent, child, wrapped)
            owners.append((view.param, wrapped, "layer"))
        else:
            parametrize.register_parametrization(owner, attr, WeightNoise(getattr(owner, attr)))
            owners.append((view.param, owner, attr))
    return owners


def _pairs(owners: list[tuple[str, nn.Module, str]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    for _, owner, attr in owners:
        if isinstance(owner, VariationalLayer):
            pairs.append((owner.weight, owner.log_sigma2))
        else:
            holder: Any = owner.parametrizations[attr]  # type: ignore[index]
            pairs.append((holder.original, holder[0].log_sigma2))
    return pairs


@dataclass
class TrainedVariational:
    """A trained model with its plain layers restored, θ unpruned, and log α kept aside, so
    that it can be pruned at many levels (sweeps train once per strength)."""

    trainable: TrainableModel
    source: onnx.ModelProto
    params: list[str]  # parameter names of the pruned weights
    thetas: list[torch.Tensor]
    log_alphas: list[torch.Tensor]
    total_params: int
    fixed_nonzeros: int  # nonzeros outside the pruned weights
    summary: dict[str, Any]
    sample_shapes: dict[str, tuple[int, ...]]

    @torch.no_grad()
    def masks(self, rule: RankRule | None) -> list[torch.Tensor]:
        if isinstance(rule, Target) and rule.metric == "params":
            keep = round(rule.ratio * self.total_params) - self.fixed_nonzeros
            if keep <= 0:
                raise InvalidSpec(
                    f"a nonzeros target of {rule.ratio:g} is below what the unpruned tensors hold."
                )
            flat = torch.sort(torch.cat([la.flatten() for la in self.log_alphas])).values
            threshold = float(flat[keep - 1]) if keep < len(flat) else math.inf
            return [la <= threshold for la in self.log_alphas]
        return [la < LOG_ALPHA_THRESHOLD for la in self.log_alphas]

    def cut(self, rule: RankRule | None) -> CompressionResult:
        """Prune by ``rule`` (a nonzeros target) or, without one, at log α > 3."""
        result = _accounting(self.prune(rule), self.source, self.sample_shapes)
        threshold = LOG_ALPHA_THRESHOLD if rule is None else None
        result.training = {"train": {**self.summary, "log_alpha_threshold": threshold}}
        return result

    @torch.no_grad()
    def prune(self, rule: RankRule | None) -> onnx.ModelProto:
        """The user's graph with θ·mask written in (θ itself is left untouched)."""
        named = dict(self.trainable.module.named_parameters())
        for name, theta, mask in zip(self.params, self.thetas, self.masks(rule), strict=True):
            named[name].copy_(theta * mask.to(theta.dtype))
        pruned = write_back(self.trainable, self.source)
        for name, theta in zip(self.params, self.thetas, strict=True):
            named[name].copy_(theta)
        return pruned


def train_variational(
    model: onnx.ModelProto, training: TrainingData, config: TrainConfig, hooks: Hooks
) -> TrainedVariational:
    """Train with the ELBO's KL term weighted by ``config.strength``; prune later, at any level."""
    strength = float(config.strength or 0.0)
    trainable, views = trainable_with_views(model, training.sample_shapes, training.logits)
    owners = make_variational(trainable, views)
    steps = math.ceil(len(training.data.x) / config.batch_size)
    kl = VariationalKL(
        _pairs(owners), len(training.data.x), strength, warmup_steps=steps * max(config.epochs // 2, 1)
    )
    trained = run_training(trainable, training, config, "train", hooks, kl)
    with torch.no_grad():
        pairs = _pairs(owners)
        log_alphas = [_log_alpha(t, s).detach().clone() for t, s in pairs]
        prunable = sum(int(torch.count_nonzero(t)) for t, _ in pairs)
    _unwrap(trainable, owners)
    named = dict(trainable.module.named_parameters())
    params = [name for name, _, _ in owners]
    total, nonzeros = count_params(model)
    return TrainedVariational(
        trainable,
        model,
        params,
        [named[p].detach().clone() for p in params],
        log_alphas,
        total,
        nonzeros - prunable,
        {**stage_summary(trained), "strength": strength},
        dict(training.sample_shapes),
    )


def _unwrap(trainable: TrainableModel, owners: list[tuple[str, nn.Module, str]]) -> None:
    """Put the plain layers back (θ as trained) so parameter names match the ONNX bindings."""
    module = trainable.module
    for param_name, owner, attr in owners:
        if isinstance(owner, VariationalLayer):
            owner_name = param_name.rpartition(".")[0]
            parent_name, _, child = owner_name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            setattr(parent, child, owner.layer)
        else:
            parametrize.remove_parametrizations(owner, attr, leave_parametrized=False)


def _accounting(
    pruned: onnx.ModelProto, original: onnx.ModelProto, sample_shapes: dict[str, tuple[int, ...]]
) -> CompressionResult:
    shapes, batch = analysis_shapes(original, sample_shapes)
    return count_nonzeros(pruned, shapes, batch)
