"""``group_lasso``: fine-tune with λ Σ_g ‖W_g‖₂ over output neurons/filters, then remove them.

Groups are the rows of each layer's out × in matrix (a conv filter, a neuron's weights)
together with the layer's bias entry when torch keeps one, and the channel's scale and shift
in any BatchNormalization the channel passes through (``channels.channel_affines``): after
a normalization the filter's scale does not matter and a zero filter still emits the shift,
so without them the penalty shrinks filters that the normalization scales back up, and
switches no channel off (the network-slimming observation, Liu et al. 2017). After each optimizer step the
group prox W_g ← W_g · max(0, 1 − lr·λ/‖W_g‖) (group soft-thresholding, Wen et al. 2016)
switches whole groups to exactly zero. Only layers whose channels can be physically
removed (``compressors.channels.prunable_layers``) are penalized; layers tied by a
residual Add are left alone and reported.

Removal: ``Energy(1.0)`` removes exactly the zeroed groups; ``Energy(e)`` keeps per layer
the largest groups holding ≥ e of Σ‖W_g‖²; a ``Target`` removes groups model-wide in order
of their norm relative to the mean group norm of their own layer (zeroed groups first),
until params or MACs reach the target (smallest count that does). Raw norms are not
comparable across layers: fan-in, normalizations and ReLU's scale freedom set each
layer's scale, and ranking by them empties whichever layer happens to be small.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch

from compressors.errors import InvalidSpec
from compressors.intake.loading import LoadedModel
from compressors.onnx.channels import (
    ChannelRemoval,
    channel_affines,
    group_norms,
    prunable_layers,
    remove_channels,
)
from compressors.onnx.inspection import analysis_shapes
from compressors.onnx.layers import find_layers
from compressors.onnx.macs import count_params
from compressors.onnx.ranks import Energy, RankRule, Target
from compressors.onnx.result import CompressionResult, LayerResult
from compressors.training.convert import TrainableModel, write_back
from compressors.training.loop import TrainConfig
from compressors.training.retrain import (
    Hooks,
    TrainingData,
    finish,
    run_training,
    stage_summary,
    trainable_with_views,
)
from compressors.training.views import WeightView


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


@dataclass
class TrainedGroupLasso:
    source: onnx.ModelProto  # trained weights in the user's graph
    sample_shapes: dict[str, tuple[int, ...]]
    layers: list[str]  # penalized (removable) layers
    tied: dict[str, str] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    affines: dict[str, list[str]] = field(default_factory=dict)  # layer -> normalization tensors

    def remove(self, rule: RankRule) -> CompressionResult:
        shapes, batch = analysis_shapes(self.source, self.sample_shapes)
        norms = group_norms(self.source, self.layers, self.affines)
        if isinstance(rule, Energy):
            keep = {name: _keep_by_energy(n, rule.energy) for name, n in norms.items()}
            removal = remove_channels(self.source, keep, shapes)
        elif isinstance(rule, Target):
            removal = _remove_to_target(self.source, norms, rule, shapes, self.sample_shapes)
        else:
            raise InvalidSpec("group_lasso takes energy or a params/MACs target, not fixed ranks.")
        result = _accounting(self.source, removal, shapes, batch, self.sample_shapes)
        result.notes += [f"{name} keeps all its channels: {why}." for name, why in self.tied.items()]
        return result


def _keep_by_energy(norms: np.ndarray, energy: float) -> np.ndarray:
    if energy >= 1.0:
        return np.flatnonzero(norms > 1e-8 * max(float(norms.max()), 1e-30))
    order = np.argsort(-norms)
    share = np.cumsum(norms[order] ** 2) / max(float((norms**2).sum()), 1e-30)
    count = min(int(np.searchsorted(share, energy - 1e-12)) + 1, len(norms))
    return np.sort(order[:count])


def _remove_to_target(
    model: onnx.ModelProto,
    norms: Mapping[str, np.ndarray],
    rule: Target,
    shapes: Mapping[str, tuple[int, ...]],
    sample: dict[str, tuple[int, ...]],
) -> ChannelRemoval:
    """Remove the k groups with the lowest norm relative to their layer's mean, model-wide,
    with the smallest k that meets the target."""
    before = _cost(model, rule.metric, sample)
    scored = sorted(
        (
            (float(n[c]) / max(float(n.mean()), 1e-30), name, c)
            for name, n in norms.items()
            for c in range(len(n))
        ),
    )

    def attempt(k: int) -> tuple[ChannelRemoval, float]:
        dropped: dict[str, set[int]] = {name: set() for name in norms}
        for _, name, c in scored[:k]:
            dropped[name].add(c)
        keep = {name: np.array(sorted(set(range(len(n))) - dropped[name])) for name, n in norms.items()}
        removal = remove_channels(model, keep, shapes)
        return removal, _cost(removal.model, rule.metric, sample) / before

    low, high = 0, len(scored)
    best, ratio = attempt(high)
    if ratio > rule.ratio + 1e-9:
        raise InvalidSpec(
            f"a {rule.metric} target of {rule.ratio:g} is unreachable by removing channels: the smallest "
            f"reachable is {ratio:.3f} (tied layers and the rest of the model stay)."
        )
    while low < high:
        mid = (low + high) // 2
        removal, ratio = attempt(mid)
        if ratio <= rule.ratio + 1e-9:
            high, best = mid, removal
        else:
            low = mid + 1
    return best


def _cost(model: onnx.ModelProto, metric: str, sample: dict[str, tuple[int, ...]]) -> float:
    if metric == "params":
        return float(count_params(model)[0])
    shapes, batch = analysis_shapes(model, sample)  # channel counts changed: shapes re-derived
    return float(sum(layer.macs for layer in find_layers(model, shapes, batch)))


def _accounting(
    source: onnx.ModelProto,
    removal: ChannelRemoval,
    shapes: Mapping[str, tuple[int, ...]],
    batch: int,
    sample: dict[str, tuple[int, ...]],
) -> CompressionResult:
    before = {layer.name: layer for layer in find_layers(source, shapes, batch)}
    new_shapes, new_batch = analysis_shapes(removal.model, sample)
    after = {layer.name: layer for layer in find_layers(removal.model, new_shapes, new_batch)}
    rows = []
    for name, old in before.items():
        new = after.get(name, old)
        channels = (
            (removal.kept[name], removal.kept[name] + removal.removed[name]) if name in removal.kept else None
        )
        rows.append(
            LayerResult(
                name,
                old.op,
                list(old.weight_shape),
                old.full_rank,
                None,
                None,
                old.params,
                new.params,
                old.macs,
                new.macs,
                channels=channels,
            )
        )
    return CompressionResult(
        removal.model, rows, sum(r.macs_before for r in rows), sum(r.macs_after for r in rows)
    )


def train_group_lasso(
    model: LoadedModel, training: TrainingData, config: TrainConfig, strength: float, hooks: Hooks
) -> TrainedGroupLasso:
    shapes, _ = analysis_shapes(model.proto, training.sample_shapes)
    verdicts = prunable_layers(model.proto, shapes)
    trainable, views = trainable_with_views(model.proto, training.sample_shapes)
    removable = [v for v in views if verdicts.get(v.layer) is None]
    affines = _bound_affines(model.proto, shapes, trainable, removable)
    prox = GroupLassoProx(
        trainable.module,
        removable,
        strength,
        {v.param: [param for param, _ in affines.get(v.layer, [])] for v in removable},
    )
    trained = run_training(trainable, training, config, "train", hooks, prox)
    tied = {name: why for name, why in verdicts.items() if why is not None}
    return TrainedGroupLasso(
        write_back(trainable, model.proto),
        dict(training.sample_shapes),
        [v.layer for v in removable],
        tied,
        {**stage_summary(trained), "strength": strength},
        {layer: [tensor for _, tensor in pairs] for layer, pairs in affines.items()},
    )


def _bound_affines(
    model: onnx.ModelProto,
    shapes: Mapping[str, tuple[int, ...]],
    trainable: TrainableModel,
    views: list[WeightView],
) -> dict[str, list[tuple[str, str]]]:
    """Per removable layer, (torch parameter, ONNX tensor) of the normalization scales and
    shifts its channels pass through, where training can move them."""
    found = channel_affines(model, shapes)
    bound = {v.layer: [(trainable.parameter_of(t), t) for t in found.get(v.layer, [])] for v in views}
    return {layer: [(p, t) for p, t in pairs if p is not None] for layer, pairs in bound.items()}


def compress(
    model: LoadedModel,
    training: TrainingData,
    rule: RankRule,
    config: TrainConfig,
    strength: float,
    finetune_epochs: int = 0,
    hooks: Hooks | None = None,
) -> CompressionResult:
    hooks = hooks or Hooks()
    trained = train_group_lasso(model, training, config, strength, hooks)
    result = trained.remove(rule)
    result.training = {"train": trained.summary}
    return finish(result, training, config, finetune_epochs, hooks, keep_zeros=False)
