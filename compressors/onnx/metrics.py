"""Measuring the artifact users will run: onnxruntime latency, accuracy, fidelity, file size."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from compressors.onnx.graph import Shape, concrete_input_shapes, fixed_batch, graph_inputs


def session(model: onnx.ModelProto | Path, threads: int = 1) -> ort.InferenceSession:
    """A CPU session with intra-op threads fixed, so that latencies compare like with like."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def saved_size(model: onnx.ModelProto) -> int:
    """Bytes of the model written as one .onnx file (what the service hands back)."""
    return model.ByteSize()


@dataclass
class Latency:
    batch: int
    median_ms: float | None  # None when the model's batch is fixed to another size
    runs: int
    threads: int


def measure_latency(
    model: onnx.ModelProto,
    batches: tuple[int, ...] = (1, 32),
    threads: int = 1,
    sample_shapes: Mapping[str, Shape] | None = None,
    warmup: int = 3,
    min_runs: int = 10,
    max_seconds: float = 2.0,
) -> list[Latency]:
    """Median wall time of ``session.run`` after warm-up, per batch size.

    Runs repeat until ``min_runs`` and ``max_seconds`` are both reached (at most 1000)."""
    sess = session(model, threads)
    baked = fixed_batch(model)
    rng = np.random.default_rng(0)
    results = []
    for batch in batches:
        if baked is not None and baked != batch:
            results.append(Latency(batch, None, 0, threads))
            continue
        feeds = random_feeds(sess, concrete_input_shapes(model, batch, sample_shapes), rng)
        for _ in range(warmup):
            sess.run(None, feeds)
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < 1000 and (len(times) < min_runs or time.perf_counter() - start < max_seconds):
            t0 = time.perf_counter()
            sess.run(None, feeds)
            times.append(time.perf_counter() - t0)
            if len(times) >= min_runs and time.perf_counter() - start > max_seconds:
                break
        results.append(Latency(batch, statistics.median(times) * 1e3, len(times), threads))
    return results


def random_feeds(
    sess: ort.InferenceSession, shapes: Mapping[str, Shape], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    feeds = {}
    for meta in sess.get_inputs():
        shape = shapes[meta.name]
        if meta.type in ("tensor(float)", "tensor(double)", "tensor(float16)"):
            dtype = {"tensor(float)": np.float32, "tensor(double)": np.float64}.get(meta.type, np.float16)
            feeds[meta.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[meta.name] = np.zeros(shape, dtype=np.int64 if "int64" in meta.type else np.int32)
    return feeds


Inputs = np.ndarray | Sequence[np.ndarray]


def predict(
    model: onnx.ModelProto | ort.InferenceSession,
    x: Inputs,
    batch: int = 256,
    output: str | None = None,
) -> np.ndarray:
    """The model's scores on ``x`` (one array per model input, in graph order; or one array),
    computed in batches (the graph's own batch, padded, for a fixed-batch model): the output
    named ``output``, else the first. Shaped (N, classes), or (N, seq, classes) when the
    scores are per position."""
    if isinstance(model, onnx.ModelProto) and output is not None:
        from compressors.onnx.outputs import up_to

        model = up_to(model, output)
    sess = model if isinstance(model, ort.InferenceSession) else session(model, threads=2)
    arrays = [x] if isinstance(x, np.ndarray) else list(x)
    metas = sess.get_inputs()[: len(arrays)]
    names = [m.name for m in metas]
    declared = metas[0].shape
    fixed = bool(declared) and isinstance(declared[0], int)
    step = declared[0] if fixed else batch
    rows = len(arrays[0])
    which = [output] if output is not None and output in {o.name for o in sess.get_outputs()} else None
    outs = []
    for start in range(0, rows, step):
        chunks = [a[start : start + step] for a in arrays]
        real = len(chunks[0])
        if real < step and fixed:
            # a fixed-batch model: pad the last chunk, keep only the real rows
            chunks = [np.concatenate([c, np.repeat(c[-1:], step - real, axis=0)]) for c in chunks]
        outs.append(np.asarray(sess.run(which, dict(zip(names, chunks, strict=True)))[0])[:real])
    scores = np.concatenate(outs)
    if scores.ndim > 2 and int(np.prod(scores.shape[1:-1])) > 1 and scores.shape[-1] > 1:
        return scores  # per-position scores: (N, seq, classes)
    return scores.reshape(rows, -1)


def rows_of(logits: np.ndarray, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-position scores (N, seq, C) and labels (N, seq) as (N·seq, C) and (N·seq,)."""
    flat = logits.reshape(-1, logits.shape[-1])
    return flat, None if labels is None else labels.reshape(-1)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Top-1, and top-5 when there are at least 10 classes (per position for a language model)."""
    logits, labels = rows_of(logits, labels)  # type: ignore[assignment]
    result = {"top1": float(np.mean(logits.argmax(axis=1) == labels))}
    if logits.shape[1] >= 10:
        top5 = np.argsort(-logits, axis=1)[:, :5]
        result["top5"] = float(np.mean((top5 == labels[:, None]).any(axis=1)))
    return result


def fidelity(logits: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Agreement with the original model: top-1 agreement and max |logit difference|."""
    logits, reference = rows_of(logits)[0], rows_of(reference)[0]
    return {
        "top1_agreement": float(np.mean(logits.argmax(axis=1) == reference.argmax(axis=1))),
        "max_abs_logit_diff": float(np.max(np.abs(logits - reference))),
    }


def single_input_name(model: onnx.ModelProto) -> str:
    inputs = graph_inputs(model)
    return inputs[0].name


def write_model(model: onnx.ModelProto, path: Path) -> int:
    """Write atomically (temp file, then rename) and return the size in bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".tmp-", delete=False) as tmp:
        tmp.write(model.SerializeToString())
    Path(tmp.name).replace(path)
    return path.stat().st_size
