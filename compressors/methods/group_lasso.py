"""``group_lasso``: trains with λ·Σ‖W_g‖ over output neurons/filters, then removes them.

Groups are the rows of each layer's out × in matrix (a conv filter, a neuron's weights)
together with the layer's bias entry when torch keeps one, and the channel's scale and shift
in any BatchNormalization the channel passes through (``channels.channel_affines``): after
a normalization the filter's scale does not matter and a zero filter still emits the shift,
so without them the penalty shrinks filters that the normalization scales back up, and
switches no channel off (the network-slimming observation, Liu et al. 2017). After each optimizer step the
group prox W_g ← W_g · max(0, 1 − lr·λ/‖W_g‖) (group soft-thresholding, Wen et al. 2016)
switches whole groups to exactly zero. Only layers whose channels can be physically
removed (``compressors.onnx.channels.prunable_layers``) are penalized; layers tied by a
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
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from compressors.errors import InvalidSpec
from compressors.intake.loading import LoadedModel
from compressors.methods.registry import RULES, register
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
from compressors.onnx.ranks import Energy, RankRule, Target, truncate_to_energy
from compressors.onnx.result import CompressionResult, LayerResult
from compressors.training.inputs import Hooks, TrainConfig, TrainingData

if TYPE_CHECKING:
    from compressors.training.convert import TrainableModel
    from compressors.training.prox import GroupLassoProx
    from compressors.training.views import WeightView


@dataclass
class TrainedGroupLasso:
    source: onnx.ModelProto  # trained weights in the user's graph
    sample_shapes: dict[str, tuple[int, ...]]
    layers: list[str]  # penalized (removable) layers
    tied: dict[str, str] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    affines: dict[str, list[str]] = field(default_factory=dict)  # layer -> normalization tensors

    def cut(self, rule: RankRule | None) -> CompressionResult:
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
    return np.sort(order[: truncate_to_energy(norms[order], energy)])


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
    _refuse_unreachable(rule, ratio)
    while low < high:
        mid = (low + high) // 2
        removal, ratio = attempt(mid)
        if ratio <= rule.ratio + 1e-9:
            high, best = mid, removal
        else:
            low = mid + 1
    return best


def _refuse_unreachable(rule: Target, ratio: float) -> None:
    if ratio > rule.ratio + 1e-9:
        raise InvalidSpec(
            f"a {rule.metric} target of {rule.ratio:g} is unreachable by removing channels: the smallest "
            f"reachable is {ratio:.3f} (tied layers and the rest of the model stay)."
        )


def precheck(
    model: onnx.ModelProto, rule: RankRule | None, sample: Mapping[str, tuple[int, ...]] | None
) -> None:
    """Before training: refuse a model with no removable channel (naming why, layer by layer),
    and a target that removing every removable channel would still not reach."""
    shapes, _ = analysis_shapes(model, sample)
    verdicts = prunable_layers(model, shapes)
    removable = [name for name, why in verdicts.items() if why is None]
    if not removable:
        some = "; ".join(f"{name}: {why}" for name, why in list(verdicts.items())[:3])
        raise InvalidSpec(
            f"group_lasso finds no removable channel in this model ({some or 'no Gemm, MatMul or Conv'}); "
            "use nuclear, l2 or svd, which factorize instead."
        )
    if isinstance(rule, Target):
        keep = {name: np.array([], dtype=np.int64) for name in removable}
        gone = remove_channels(model, keep, shapes).model
        _refuse_unreachable(
            rule, _cost(gone, rule.metric, dict(sample or {})) / _cost(model, rule.metric, dict(sample or {}))
        )


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
        rows.append(LayerResult.of(old, params_after=new.params, macs_after=new.macs, channels=channels))
    return CompressionResult(
        removal.model, rows, sum(r.macs_before for r in rows), sum(r.macs_after for r in rows)
    )


@register(
    "group_lasso", "structure", RULES, {"energy": 0.9}, strength=1.0, sweep=(0.3, 1.0, 3.0), precheck=precheck
)
def train(
    model: LoadedModel, data: TrainingData | None, config: TrainConfig, hooks: Hooks
) -> TrainedGroupLasso:
    from compressors.training.prox import GroupLassoProx
    from compressors.training.retrain import retrain

    assert data is not None
    shapes, _ = analysis_shapes(model.proto, data.sample_shapes)
    verdicts = prunable_layers(model.proto, shapes)
    bound: dict[str, list[tuple[str, str]]] = {}

    def prox(trainable: TrainableModel, views: list[WeightView]) -> GroupLassoProx:
        removable = [v for v in views if verdicts.get(v.layer) is None]
        bound.update(_bound_affines(model.proto, shapes, trainable, removable))
        per_param = {v.param: [param for param, _ in bound.get(v.layer, [])] for v in removable}
        return GroupLassoProx(trainable.module, removable, float(config.strength or 0.0), per_param)

    done = retrain(model.proto, data, config, hooks, prox)
    assert isinstance(done.regularizer, GroupLassoProx)
    return TrainedGroupLasso(
        done.model,
        dict(data.sample_shapes),
        [v.layer for v in done.regularizer.views],
        {name: why for name, why in verdicts.items() if why is not None},
        done.summary,
        {layer: [tensor for _, tensor in pairs] for layer, pairs in bound.items()},
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
