"""Rank rules: energy truncation and whole-model allocation."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from compressors.errors import InvalidSpec
from compressors.onnx.inspection import analysis_shapes
from compressors.onnx.lowrank import factorize
from compressors.onnx.macs import count_macs, count_params
from compressors.onnx.ranks import (
    Energy,
    LayerBudget,
    Target,
    allocate_ranks,
    break_even_rank,
    truncate_to_energy,
)
from tests import builders


def test_truncate_to_energy_keeps_the_smallest_rank_reaching_the_share() -> None:
    sigma = np.sqrt(np.array([50.0, 30.0, 15.0, 5.0]))  # energies 0.5, 0.8, 0.95, 1.0
    assert truncate_to_energy(sigma, 0.5) == 1
    assert truncate_to_energy(sigma, 0.51) == 2
    assert truncate_to_energy(sigma, 0.8) == 2
    assert truncate_to_energy(sigma, 0.9) == 3
    assert truncate_to_energy(sigma, 1.0) == 4
    with pytest.raises(InvalidSpec):
        truncate_to_energy(sigma, 0.0)


def test_break_even_rank() -> None:
    assert break_even_rank(512, 512) == 256
    assert break_even_rank(64, 10) == 9


def test_allocation_favours_the_layer_with_concentrated_energy() -> None:
    flat = LayerBudget(np.ones(64), cost_per_rank=128, dense_cost=64 * 64, full_rank=64)
    peaked = LayerBudget(np.exp(-np.arange(64) / 3.0), cost_per_rank=128, dense_cost=64 * 64, full_rank=64)
    flat_rank, peaked_rank = allocate_ranks([flat, peaked], budget=0.25 * 2 * 64 * 64)
    assert flat_rank is not None and peaked_rank is not None
    assert flat_rank > peaked_rank  # flat spectra need more rank for the same energy share
    assert (flat_rank + peaked_rank) * 128 <= 0.25 * 2 * 64 * 64


def test_allocation_refuses_a_budget_below_rank_one_everywhere() -> None:
    layer = LayerBudget(np.ones(8), cost_per_rank=100, dense_cost=1600, full_rank=8)
    with pytest.raises(InvalidSpec):
        allocate_ranks([layer, layer], budget=150)


@pytest.mark.parametrize("ratio", [0.5, 0.25, 0.125])
@pytest.mark.parametrize("metric", ["params", "macs"])
def test_whole_model_target_is_hit_within_two_percent(ratio: float, metric: str) -> None:
    model = builders.matmul(["batch", 3], 384, 512)
    conv = builders.conv(32, 64, (3, 3), (16, 16), pads=(1, 1, 1, 1))
    for m in (model, conv, _conv_then_depthwise()):
        shapes, batch = analysis_shapes(m)
        result = factorize(m, shapes, Target(ratio, metric), batch)
        # measured on the whole written graph (biases included), not on the report's rows
        if metric == "macs":
            achieved = _graph_macs(result.model) / _graph_macs(m)
        else:
            achieved = count_params(result.model)[0] / count_params(m)[0]
        assert abs(achieved - ratio) <= 0.02


def _conv_then_depthwise() -> onnx.ModelProto:
    """A factorizable conv, then a depthwise one that stays as it is (~3% of params and MACs),
    so that a target counted over the factorized layers alone would miss the whole model's."""
    model = builders.conv(32, 64, (3, 3), (16, 16), pads=(1, 1, 1, 1))
    depthwise = numpy_helper.from_array(
        np.random.default_rng(1).standard_normal((64, 1, 3, 3), np.float32), "D"
    )
    model.graph.initializer.append(depthwise)
    model.graph.node[0].output[0] = "H"
    model.graph.node.append(
        helper.make_node("Conv", ["H", "D"], ["Y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=64)
    )
    return model


def _graph_macs(model: onnx.ModelProto) -> int:
    shapes, batch = analysis_shapes(model)
    return sum(count_macs(model, shapes).values()) // batch


def test_unreachable_target_says_why() -> None:
    depthwise = builders.conv(8, 8, (3, 3), (9, 9), pads=(1, 1, 1, 1), group=8)
    shapes, batch = analysis_shapes(depthwise)
    with pytest.raises(InvalidSpec, match="cannot be factorized"):
        factorize(depthwise, shapes, Target(0.5, "macs"), batch)


def test_conv_ranks_move_in_blocks_of_eight() -> None:
    # energy: rounded up to the block
    conv = builders.conv(64, 128, (3, 3), (32, 32), pads=(1, 1, 1, 1))
    shapes, batch = analysis_shapes(conv)
    (layer,) = factorize(conv, shapes, Energy(0.7), batch).layers
    assert layer.rank is not None and layer.rank % 8 == 0
    # targets: every step is a block, when the model has enough layers to fill the budget finely
    rng = np.random.default_rng(0)
    layers = [LayerBudget(np.sort(rng.random(256))[::-1], 100, 256 * 256, 256, multiple=8) for _ in range(20)]
    ranks = allocate_ranks(layers, budget=0.3 * 20 * 256 * 256)
    assert all(r is not None and r % 8 == 0 for r in ranks)
    assert abs(sum(r * 100 for r in ranks if r) - 0.3 * 20 * 256 * 256) <= 0.02 * 20 * 256 * 256


def test_a_layer_whose_smallest_block_saves_nothing_is_never_cut_to_rank_one() -> None:
    # the digits CNN's shape: a first conv of 16 channels over a 3×3 single-channel window (full
    # rank 9, where a block of 8 ranks costs more than the layer), a second conv in blocks of 8,
    # and a linear layer in single ranks. At one MACs target the first conv was left at rank 1
    # (its step back to dense did not fit) and the model fell to chance accuracy.
    rng = np.random.default_rng(0)
    first = LayerBudget(np.sort(rng.random(9))[::-1], (16 + 9) * 64, 16 * 9 * 64, 9, multiple=8)
    second = LayerBudget(np.sort(rng.random(32))[::-1], (32 + 144) * 16, 32 * 144 * 16, 32, multiple=8)
    linear = LayerBudget(np.sort(rng.random(64))[::-1], 512 + 10, 512 * 10 * 8, 64)
    layers = [first, second, linear]
    total = sum(layer.dense_cost for layer in layers)
    for share in np.linspace(0.05, 0.95, 181):
        try:
            ranks = allocate_ranks(layers, budget=share * total)
        except InvalidSpec:
            continue
        assert ranks[0] is None, f"first conv at rank {ranks[0]} for budget {share:.3f}"
