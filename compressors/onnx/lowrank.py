"""Truncated-SVD factorization of Gemm, MatMul and Conv layers, on the ONNX graph itself.

A layer's weight is read as a matrix W (Gemm/MatMul: the K × N right operand after
``transB``; Conv: the kernel reshaped to Cout × Cin·kh·kw, as in Alvarez & Salzmann 2017,
§3) and replaced by two factors of rank r, W ≈ (U√Σ)(√Σ Vᵀ):
- Gemm:   Y = α·A'·B' + β·C  →  T = α·A'·U ;  Y = T·V + β·C
- MatMul: Y = A·W            →  T = A·U ;     Y = T·V
- Conv:   a conv with r output channels and the original kernel, stride, padding and
          dilation, then a 1×1 conv to Cout carrying the bias.
At full rank the rewrite is exact up to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compressors.errors import InvalidSpec
from compressors.onnx.activations import (
    OutputMoments,
    bias_of,
    can_shift_bias,
    output_grams,
    weighted_spectrum,
)
from compressors.onnx.graph import Shape, attribute, constant_array, initializers, producers
from compressors.onnx.layers import Layer, find_layers, remove_unused
from compressors.onnx.macs import count_params
from compressors.onnx.ranks import (
    Energy,
    Fixed,
    LayerBudget,
    RankRule,
    Target,
    allocate_ranks,
    energy_fractions,
    truncate_to_energy,
)
from compressors.onnx.result import CompressionResult, LayerResult

# Conv ranks move in blocks of 8: onnxruntime's CPU convolutions work on NCHWc blocks of 8
# channels, and a rank off that grid sends the layer through layout reorders that cost more
# than the MACs saved (bench/factorize.py measured ResNet-50 8–31% faster with rounded ranks).
CONV_RANK_MULTIPLE = 8


def weight_matrix(model: onnx.ModelProto, layer: Layer) -> np.ndarray:
    """The rows × cols matrix the layer multiplies by (see module docstring)."""
    graph = model.graph
    value = constant_array(layer.weight, initializers(graph), producers(graph))
    assert value is not None  # eligibility checked it is a constant
    node = graph.node[layer.index]
    if layer.op == "Conv":
        return value.reshape(layer.rows, layer.cols)
    if layer.op == "Gemm" and attribute(node, "transB", 0):
        return value.T
    return value


def choose_ranks(
    layers: list[Layer], spectra: list[np.ndarray], rule: RankRule, total_cost: int
) -> list[int | None]:
    """Per eligible layer: the rank to keep, or None to leave it dense."""
    if isinstance(rule, Fixed):
        wanted = rule.ranks
        return [
            min(wanted if isinstance(wanted, int) else wanted[layer.name], layer.full_rank)
            if isinstance(wanted, int) or layer.name in wanted
            else None
            for layer in layers
        ]
    if isinstance(rule, Energy):
        chosen: list[int | None] = []
        for layer, sigma in zip(layers, spectra, strict=True):
            r = truncate_to_energy(sigma, rule.energy)
            if layer.op == "Conv":
                r = min(-(-r // CONV_RANK_MULTIPLE) * CONV_RANK_MULTIPLE, layer.full_rank)
            chosen.append(r if r * (layer.rows + layer.cols) < layer.params else None)
        return chosen
    metric = rule.metric
    fixed = total_cost - sum(layer.dense_cost(metric) for layer in layers)
    budget = rule.ratio * total_cost - fixed
    if budget <= 0:
        raise InvalidSpec(
            f"a {metric} target of {rule.ratio:g} is unreachable: layers that cannot be "
            f"factorized already account for {fixed / total_cost:.1%} of the model's {metric}."
        )
    budgets = [
        LayerBudget(
            sigma,
            layer.cost_per_rank(metric),
            layer.dense_cost(metric),
            layer.full_rank,
            CONV_RANK_MULTIPLE if layer.op == "Conv" else 1,
        )
        for layer, sigma in zip(layers, spectra, strict=True)
    ]
    try:
        ranks = allocate_ranks(budgets, budget)
        if abs(_cost(budgets, ranks) - budget) <= 0.01 * total_cost:
            return ranks
    except InvalidSpec:
        pass
    # blocks of 8 are too coarse for this model (few, small convs): single-rank steps
    fine = [LayerBudget(b.singular_values, b.cost_per_rank, b.dense_cost, b.full_rank) for b in budgets]
    return allocate_ranks(fine, budget)


def _cost(budgets: list[LayerBudget], ranks: list[int | None]) -> float:
    return float(
        sum(b.dense_cost if r is None else r * b.cost_per_rank for b, r in zip(budgets, ranks, strict=True))
    )


def factorize(
    model: onnx.ModelProto,
    shapes: Mapping[str, Shape],
    rule: RankRule,
    batch: int = 1,
    grams: Mapping[str, OutputMoments] | None = None,
    calibration: np.ndarray | None = None,
) -> CompressionResult:
    """Factorize every eligible layer by ``rule`` at the given static shapes.

    With ``grams`` (per layer name, the moments of its output on calibration data:
    ``compressors.onnx.activations``) ranks are chosen on those output spectra and each
    layer is truncated to minimize its output error on the data rather than its weight
    error. With the ``calibration`` inputs too, layers are truncated in graph order, each
    on what it sees once the layers before it are factorized (the moments are taken again
    on the partly factorized model), so that a layer is fitted to its actual inputs.
    Returns a new model; the input is not modified. A layer is factorized only when its
    chosen rank lowers its cost; otherwise it is kept dense and reported with rank None.
    """
    everything = find_layers(model, shapes, batch)
    layers = [layer for layer in everything if layer.eligible]
    totals = {"params": count_params(model)[0], "macs": sum(layer.macs for layer in everything)}
    parts = [_decompose(model, layer, (grams or {}).get(layer.name)) for layer in layers]
    metric = rule.metric if isinstance(rule, Target) else "params"
    ranks = choose_ranks(layers, [p.sigma for p in parts], rule, totals[metric])
    out = onnx.ModelProto()
    out.CopyFrom(model)
    results: list[LayerResult] = []
    replacements: dict[int, list[onnx.NodeProto]] = {}
    for layer, part, rank in zip(layers, parts, ranks, strict=True):
        kept = 1.0 if rank is None else float(energy_fractions(part.sigma)[rank - 1])
        after_params = layer.params if rank is None else rank * (layer.rows + layer.cols)
        after_macs = layer.macs if rank is None else rank * layer.cost_per_rank("macs")
        results.append(
            LayerResult.of(
                layer, params_after=after_params, macs_after=after_macs, rank=rank, energy_kept=kept
            )
        )
        if rank is None:
            continue
        if grams is not None and calibration is not None and replacements:
            partly = with_replacements(out, replacements)
            remove_unused(partly.graph)
            seen = output_grams(partly, [layer], calibration, model)
            part = _decompose(model, layer, seen.get(layer.name))
        left, right, bias = part.factors(rank)
        replacements[layer.index] = _rewrite(out.graph, out.graph.node[layer.index], layer, left, right, bias)
    out = with_replacements(out, replacements)
    remove_unused(out.graph)
    saved = sum(r.macs_before - r.macs_after for r in results)
    return CompressionResult(out, results, totals["macs"], totals["macs"] - saved)


def with_replacements(
    model: onnx.ModelProto, replacements: Mapping[int, list[onnx.NodeProto]]
) -> onnx.ModelProto:
    """A copy of ``model`` whose node ``i`` is replaced by ``replacements[i]``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = []
    for index, node in enumerate(out.graph.node):
        nodes.extend(replacements.get(index, [node]))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


Factors = tuple[np.ndarray, np.ndarray, np.ndarray | None]  # left, right, new bias (None: keep)


@dataclass
class Decomposition:
    """A layer's spectrum and how to build its rank-r factors, W ≈ left · right (rows × r, r × cols)."""

    sigma: np.ndarray
    factors: Callable[[int], Factors]


def _decompose(model: onnx.ModelProto, layer: Layer, moments: OutputMoments | None) -> Decomposition:
    matrix = weight_matrix(model, layer)
    if moments is None:
        return decompose(matrix, layer, None)
    if can_shift_bias(model, layer):
        return decompose(matrix, layer, moments.covariance, moments.mean, bias_of(model, layer))
    return decompose(matrix, layer, moments.gram)


def decompose(
    matrix: np.ndarray,
    layer: Layer,
    gram: np.ndarray | None,
    mean: np.ndarray | None = None,
    bias: np.ndarray | None = None,
) -> Decomposition:
    """Plain truncated SVD of the weight, W ≈ (U√Σ)(√Σ Vᵀ); or, with the Gram (or, given the
    output ``mean`` and the layer's ``bias``, the covariance) of the layer's output, the
    output-error-optimal M̂ = M·V_k·V_kᵀ (M = the in × out matrix: W for a Gemm/MatMul, Wᵀ for
    a Conv), split as (M·V_k)(V_kᵀ), with the bias taking the mean's error
    (``compressors.onnx.activations``)."""
    if gram is None:
        u, s, vt = np.linalg.svd(matrix, full_matrices=False)

        def plain(rank: int) -> Factors:
            root = np.sqrt(s[:rank])
            left, right = u[:, :rank] * root, root[:, None] * vt[:rank]
            return left.astype(np.float32), right.astype(np.float32), None

        return Decomposition(s, plain)
    sigma, directions = weighted_spectrum(gram, layer.full_rank)
    m = matrix.astype(np.float64).T if layer.op == "Conv" else matrix.astype(np.float64)

    def weighted(rank: int) -> Factors:
        v = directions[:, :rank]  # out × r, orthonormal
        into, out_of = m @ v, v.T  # in × r, r × out
        shifted = (
            None if mean is None or bias is None else (bias + mean - (mean @ v) @ v.T).astype(np.float32)
        )
        if layer.op == "Conv":  # W = Mᵀ ≈ v · (M v)ᵀ: rows are outputs
            return out_of.T.astype(np.float32), into.T.astype(np.float32), shifted
        return into.astype(np.float32), out_of.astype(np.float32), shifted

    return Decomposition(sigma, weighted)


def _rewrite(
    graph: onnx.GraphProto,
    node: onnx.NodeProto,
    layer: Layer,
    left: np.ndarray,
    right: np.ndarray,
    bias: np.ndarray | None = None,
) -> list[onnx.NodeProto]:
    """The two nodes replacing ``node``; ``bias`` (the whole β·C of a Gemm) replaces its bias."""
    stem = f"{layer.name}.lowrank"
    mid = f"{stem}.mid"
    rank = left.shape[1]
    added = list(node.input[2:3])
    if bias is not None:
        graph.initializer.append(numpy_helper.from_array(bias, f"{stem}.b"))
        added = [f"{stem}.b"]
    if layer.op == "Conv":
        # first: r filters of the original kernel; second: 1×1 conv mixing r → Cout
        kernel = layer.weight_shape[2:]
        first_w = right.reshape(rank, *layer.weight_shape[1:])
        second_w = left.reshape(layer.weight_shape[0], rank, *([1] * len(kernel)))
        keep = {a.name: a for a in node.attribute if a.name in ("strides", "pads", "dilations", "auto_pad")}
        graph.initializer.extend(
            [numpy_helper.from_array(first_w, f"{stem}.w0"), numpy_helper.from_array(second_w, f"{stem}.w1")]
        )
        first = helper.make_node(
            "Conv", [node.input[0], f"{stem}.w0"], [mid], name=f"{stem}.0", kernel_shape=list(kernel)
        )
        first.attribute.extend(keep.values())
        second = helper.make_node(
            "Conv",
            [mid, f"{stem}.w1", *added],
            list(node.output),
            name=f"{stem}.1",
            kernel_shape=[1] * len(kernel),
        )
        return [first, second]
    return _rewrite_matrix(graph, node, stem, left, right, added, bias is not None)


def _rewrite_matrix(
    graph: onnx.GraphProto,
    node: onnx.NodeProto,
    stem: str,
    left: np.ndarray,
    right: np.ndarray,
    added: list[str],
    new_bias: bool,
) -> list[onnx.NodeProto]:
    """Gemm/MatMul: T = A·left, Y = T·right (+ the bias, β·C, or the new bias as is)."""
    mid = f"{stem}.mid"
    graph.initializer.extend(
        [numpy_helper.from_array(left, f"{stem}.u"), numpy_helper.from_array(right, f"{stem}.v")]
    )
    if node.op_type == "MatMul":
        return [
            helper.make_node("MatMul", [node.input[0], f"{stem}.u"], [mid], name=f"{stem}.0"),
            helper.make_node("MatMul", [mid, f"{stem}.v"], list(node.output), name=f"{stem}.1"),
        ]
    alpha = float(attribute(node, "alpha", 1.0))
    beta = float(attribute(node, "beta", 1.0))
    first = helper.make_node(
        "Gemm",
        [node.input[0], f"{stem}.u"],
        [mid],
        name=f"{stem}.0",
        alpha=alpha,
        transA=int(attribute(node, "transA", 0)),
    )
    second = helper.make_node(
        "Gemm",
        [mid, f"{stem}.v", *added],
        list(node.output),
        name=f"{stem}.1",
        beta=1.0 if new_bias else beta,
    )
    return [first, second]
