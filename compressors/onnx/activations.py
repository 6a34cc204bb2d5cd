"""What each factorizable layer's output looks like on real data: the second moments that
activation-weighted truncation minimizes the layer's output error under.

For a layer Y = X·M (+ bias), with X its inputs (rows of a Gemm/MatMul input, or im2col
patches of a Conv's input) and M its in × out matrix, the output error of a rank-k
replacement M̂ is ‖X(M − M̂)‖_F. Its minimizer is M̂ = M·V_k·V_kᵀ, V_k the top-k
eigenvectors of the output Gram Mᵀ·(XᵀX)·M, because X·M̂ is then the best rank-k
approximation of X·M (Eckart–Young). That is the whiten-truncate-unwhiten solution of
SVD-LLM (Wang et al., ICLR 2025) and data-aware low-rank approximation, S⁻ᵀ[SᵀM]_k with
S·Sᵀ = XᵀX, without inverting S: no Cholesky to regularize, and exact where XᵀX is
singular (a pixel that is always 0). The Gram Mᵀ·XᵀX·M is the Gram of the layer's own
output without its bias, which onnxruntime hands us directly: no im2col, whatever the
stride, padding or dilation.

Where the layer has a constant bias, the projection is taken on the centered output
(covariance instead of Gram) and the bias absorbs the mean's share of the error: with
μ = E[X·M], M̂ = M·V_k·V_kᵀ and b̂ = b + μ·(I − V_k·V_kᵀ), the output error is
‖(X − E X)(M − M̂)‖, which no rank is spent on (bias correction, as in Nagel et al. 2019
for quantization). Ranks are then chosen on the covariance's spectrum.

The statistics are streamed in fp64 over chunks of the calibration samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from compressors.onnx import metrics
from compressors.onnx.graph import attribute, constant_array, initializers, producers
from compressors.onnx.layers import Layer

MAX_CALIBRATION_SAMPLES = 1024  # enough for a d × d Gram with d in the hundreds; more costs time only
MAX_CHUNK_VALUES = 1 << 24  # floats of layer outputs held at once, over all layers


@dataclass(frozen=True)
class OutputMoments:
    """A layer's output rows y − b (its product X·M, without the bias) on calibration data."""

    mean: np.ndarray  # (out,)
    covariance: np.ndarray  # (out, out), centered

    @property
    def gram(self) -> np.ndarray:
        """The uncentered second moment E[(y − b)(y − b)ᵀ]."""
        return self.covariance + np.outer(self.mean, self.mean)


def output_grams(
    model: onnx.ModelProto,
    layers: Sequence[Layer],
    x: np.ndarray,
    source: onnx.ModelProto | None = None,
    max_samples: int = MAX_CALIBRATION_SAMPLES,
) -> dict[str, OutputMoments]:
    """Per layer name: the mean and covariance of its output rows without the bias, over (up
    to ``max_samples`` evenly spaced) samples of ``x``, run through ``model``. ``source`` is
    the graph the layers were found in when ``model`` is a rewrite of it (their nodes keep
    their outputs and biases there)."""
    if not layers:
        return {}
    source = source or model
    if len(x) > max_samples:
        x = x[np.linspace(0, len(x) - 1, max_samples).astype(np.int64)]
    outputs = [source.graph.node[layer.index].output[0] for layer in layers]
    sess = metrics.session(_with_outputs(model, outputs), threads=2)
    name = sess.get_inputs()[0].name
    biases = [_bias(source, layer) for layer in layers]
    sums: list[np.ndarray | None] = [None] * len(layers)
    firsts: list[np.ndarray] = [np.zeros(0)] * len(layers)
    counts = [0] * len(layers)
    fixed = _fixed_batch(sess)
    chunk = fixed or _chunk_size(sess, name, x, outputs)
    for start in range(0, len(x), chunk):
        values = sess.run(outputs, {name: _padded(x[start : start + chunk], fixed)})
        real = len(x[start : start + chunk])
        for i, (layer, value) in enumerate(zip(layers, values, strict=True)):
            rows = _output_rows(layer, np.asarray(value, dtype=np.float64)[:real], biases[i])
            gram, first = rows.T @ rows, rows.sum(axis=0)
            if sums[i] is None:
                sums[i], firsts[i] = gram, first
            else:
                sums[i], firsts[i] = sums[i] + gram, firsts[i] + first
            counts[i] += len(rows)
    moments = {}
    for layer, total, first, count in zip(layers, sums, firsts, counts, strict=True):
        if total is not None and count > 0:
            mean = first / count
            moments[layer.name] = OutputMoments(mean, total / count - np.outer(mean, mean))
    return moments


def weighted_spectrum(gram: np.ndarray, full_rank: int) -> tuple[np.ndarray, np.ndarray]:
    """(σ, V): the singular values of X·M in descending order, cut to ``full_rank``, and the
    matching output-space directions (columns of V)."""
    values, vectors = np.linalg.eigh((gram + gram.T) / 2)
    order = np.argsort(values)[::-1][:full_rank]
    return np.sqrt(np.clip(values[order], 0.0, None)), vectors[:, order]


def _with_outputs(model: onnx.ModelProto, outputs: Sequence[str]) -> onnx.ModelProto:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    listed = {o.name for o in probe.graph.output}
    for out in outputs:
        if out not in listed:
            probe.graph.output.append(helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None))
            listed.add(out)
    return probe


def _fixed_batch(sess: object) -> int | None:
    """The batch a fixed-batch graph was exported with (None for a symbolic batch)."""
    declared = sess.get_inputs()[0].shape  # type: ignore[attr-defined]
    return declared[0] if declared and isinstance(declared[0], int) else None


def _padded(x: np.ndarray, batch: int | None) -> np.ndarray:
    """``x`` padded with copies of its last row to a fixed-batch graph's batch."""
    if batch is None or len(x) >= batch:
        return x
    return np.concatenate([x, np.repeat(x[-1:], batch - len(x), axis=0)])


def _chunk_size(sess: object, name: str, x: np.ndarray, outputs: list[str]) -> int:
    """Samples per run so that the layer outputs held at once stay under MAX_CHUNK_VALUES."""
    values = sess.run(outputs, {name: x[:1]})  # type: ignore[attr-defined]
    per_sample = max(sum(int(np.prod(v.shape)) for v in values), 1)
    return int(max(1, min(256, MAX_CHUNK_VALUES // per_sample)))


def can_shift_bias(model: onnx.ModelProto, layer: Layer) -> bool:
    """Whether a factorized layer can take a corrected bias: a Conv or Gemm whose bias is
    absent or a constant row over its outputs."""
    node = model.graph.node[layer.index]
    if layer.op not in ("Conv", "Gemm"):
        return False
    if len(node.input) < 3 or not node.input[2]:
        return True
    return not isinstance(_bias(model, layer), float)


def bias_of(model: onnx.ModelProto, layer: Layer) -> np.ndarray:
    """The (out,) bias the layer adds after its product (β·C for a Gemm; zeros when none)."""
    value = _bias(model, layer)
    out = layer.rows if layer.op == "Conv" else layer.cols
    return np.zeros(out) if isinstance(value, float) else value


def _bias(model: onnx.ModelProto, layer: Layer) -> np.ndarray | float:
    """What the layer adds after its product: a Conv's bias, a Gemm's β·C; 0 for MatMul."""
    node = model.graph.node[layer.index]
    if layer.op not in ("Conv", "Gemm") or len(node.input) < 3 or not node.input[2]:
        return 0.0
    value = constant_array(node.input[2], initializers(model.graph), producers(model.graph))
    if value is None:
        return 0.0  # a bias computed at run time: the Gram then counts it, a mild bias only
    value = value.astype(np.float64).reshape(-1)
    out = layer.rows if layer.op == "Conv" else layer.cols
    if value.size != out:
        return 0.0  # a Gemm C that is not one row broadcast over the batch: counted, as above
    return float(attribute(node, "beta", 1.0)) * value if layer.op == "Gemm" else value


def _output_rows(layer: Layer, value: np.ndarray, bias: np.ndarray | float) -> np.ndarray:
    """The layer's output as rows of its ``out`` features: (N·H·W, Cout) for a Conv."""
    if layer.op == "Conv":
        channels = value.shape[1]
        rows = np.moveaxis(value, 1, -1).reshape(-1, channels)
    else:
        rows = value.reshape(-1, value.shape[-1])
    return rows - bias
