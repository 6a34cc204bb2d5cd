"""Choosing ranks: per layer by retained energy, or across layers for a whole-model target.

A layer of matrix shape m × n factorized at rank r costs r·(m + n) parameters instead of
m·n (and, for MACs, the same times the number of rows it is applied to). It is only worth
factorizing below the break-even rank; at or above it the layer stays dense.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from compressors.errors import InvalidSpec


@dataclass(frozen=True)
class Energy:
    """Keep, per layer, the smallest rank whose singular values retain >= ``energy`` of Σσ²."""

    energy: float


@dataclass(frozen=True)
class Target:
    """A whole-model budget: ``ratio`` of the original params or MACs (0.25 = 4x smaller)."""

    ratio: float
    metric: str  # "params" | "macs"


@dataclass(frozen=True)
class Fixed:
    """An explicit rank per layer name (or one rank for all), factorized even when that does
    not lower the cost: for tests and for callers that chose ranks themselves."""

    ranks: dict[str, int] | int


RankRule = Energy | Target | Fixed


def break_even_rank(rows: int, cols: int) -> int:
    """The smallest rank at which two factors cost as much as the dense matrix."""
    return math.ceil(rows * cols / (rows + cols))


def energy_fractions(singular_values: np.ndarray) -> np.ndarray:
    """E(r) = Σ_{i<=r} σ_i² / Σ σ_i² for r = 1..len(σ)."""
    squares = np.asarray(singular_values, dtype=np.float64) ** 2
    total = float(squares.sum())
    if total <= 0.0:
        return np.ones_like(squares)
    return np.cumsum(squares) / total


def truncate_to_energy(singular_values: np.ndarray, energy: float) -> int:
    """Smallest rank r with E(r) >= energy (1 <= r <= len(σ))."""
    if not 0.0 < energy <= 1.0:
        raise InvalidSpec(f"energy must lie in (0, 1]; got {energy}.")
    fractions = energy_fractions(singular_values)
    # tolerate float rounding so that energy=1.0 gives full rank, not an out-of-range index
    return min(int(np.searchsorted(fractions, energy - 1e-12)) + 1, len(fractions))


@dataclass(frozen=True)
class LayerBudget:
    """What rank allocation needs of one layer."""

    singular_values: np.ndarray
    cost_per_rank: int  # params or MACs added by one more rank
    dense_cost: int  # params or MACs of the layer left dense
    full_rank: int
    multiple: int = 1  # ranks move in steps of this (a hardware-friendly channel block)


def allocate_ranks(layers: Sequence[LayerBudget], budget: float) -> list[int | None]:
    """Ranks for ``layers`` whose total cost stays within ``budget``; None means "keep dense".

    The rule is the greedy of Zhang, Zou, He & Sun, "Accelerating Very Deep Convolutional
    Networks for Classification and Detection" (TPAMI 2016, §3.4): maximize the product of
    the layers' retained energies, Π_l E_l(r_l), i.e. Σ_l log E_l(r_l), under a cost
    constraint. Because σ is sorted, each layer's marginal gain log E(r+s) − log E(r) falls
    as r grows, so taking the step with the largest gain per unit of cost first, while it
    fits, is the natural greedy for this concave knapsack. Every layer starts at its first
    step (the log objective forbids rank 0), or dense when that step saves nothing; a step
    is ``multiple`` ranks. Reaching the break-even rank turns a layer back to dense: that
    last step costs ``dense_cost − r·cost_per_rank`` and gains the remaining energy. Steps that no longer
    fit are skipped, not stopped at, so smaller steps of other layers still fill the budget;
    a last step is taken when it lands nearer the budget than stopping does, so the total
    misses it by at most half of one layer's step.
    """
    first = [_first(layer) for layer in layers]
    dense = {i for i, r in enumerate(first) if r is None}
    ranks = [layer.full_rank if r is None else r for r, layer in zip(first, layers, strict=True)]
    spent = float(sum(_cost_at(layers[i], ranks[i], i in dense) for i in range(len(layers))))
    if spent > budget:
        raise InvalidSpec(
            "the target is below what the smallest rank in every factorizable layer costs; "
            "ask for a larger ratio."
        )
    fractions = [energy_fractions(layer.singular_values) for layer in layers]
    heap: list[tuple[float, int]] = []

    def push(i: int) -> None:
        if ranks[i] >= layers[i].full_rank:
            return
        step, gain, _ = _next_step(layers[i], fractions[i], ranks[i])
        if step > 0:
            heapq.heappush(heap, (-gain / step, i))

    for i in range(len(layers)):
        if i not in dense:
            push(i)
    while heap:
        _, i = heapq.heappop(heap)
        step, _, target = _next_step(layers[i], fractions[i], ranks[i])
        if spent + step > budget:
            continue
        spent += step
        if target is None:
            ranks[i] = layers[i].full_rank
            dense.add(i)
            continue
        ranks[i] = target
        push(i)
    _round_to_nearest(layers, fractions, ranks, dense, budget - spent)
    return [None if i in dense else ranks[i] for i in range(len(layers))]


def _cost_at(layer: LayerBudget, rank: int, dense: bool) -> int:
    return layer.dense_cost if dense else rank * layer.cost_per_rank


def _first(layer: LayerBudget) -> int | None:
    """The layer's smallest rank on its grid, or None (dense) when even that saves nothing: a
    layer held at an off-grid rank 1 because its one step back to dense did not fit the budget
    cut a small first conv to rank 1 and the model to chance accuracy."""
    start = min(layer.multiple, layer.full_rank)
    return start if start * layer.cost_per_rank < layer.dense_cost else None


def _round_to_nearest(
    layers: Sequence[LayerBudget],
    fractions: list[np.ndarray],
    ranks: list[int],
    dense: set[int],
    left: float,
) -> None:
    """The greedy stops under the budget by up to one step; take the one step (if any) that
    lands closer to it, so the target is met from either side by at most half a step."""
    best, best_gap = None, left
    for i, layer in enumerate(layers):
        if i in dense or ranks[i] >= layer.full_rank:
            continue
        step, _, _ = _next_step(layer, fractions[i], ranks[i])
        if step > 0 and abs(left - step) < best_gap:
            best, best_gap = i, abs(left - step)
    if best is None:
        return
    _, _, target = _next_step(layers[best], fractions[best], ranks[best])
    if target is None:
        dense.add(best)
        ranks[best] = layers[best].full_rank
    else:
        ranks[best] = target


def _next_step(layer: LayerBudget, fractions: np.ndarray, r: int) -> tuple[float, float, int | None]:
    """(cost, gain in log energy, new rank or None for dense) of the layer's next step."""
    current = max(float(fractions[r - 1]), 1e-300)
    multiple = max(layer.multiple, 1)
    target = min((r // multiple + 1) * multiple, layer.full_rank)
    if target * layer.cost_per_rank >= layer.dense_cost:
        return layer.dense_cost - r * layer.cost_per_rank, -math.log(current), None
    return (
        (target - r) * layer.cost_per_rank,
        math.log(max(float(fractions[target - 1]), 1e-300) / current),
        target,
    )
