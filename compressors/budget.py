"""An accuracy budget instead of a ratio: the most compressed cut whose top-1 drop (or, without
labels, disagreement with the original) stays within ``max_drop``.

The search cuts one trained model at many targets (MACs, or params for methods that only
sparsify) and scores each on a search split, which is never the split the report scores on.
It walks down a coarse grid of targets 2^(1/2) apart from 0.9 until a cut breaks the budget,
then bisects (in log ratio) between the last cut that kept it and the first that did not.
Accuracy is not exactly monotone in the target, so the answer is the smallest target that
kept the budget among all the cuts tried; every cut tried is in the trace. A cut keeps the
budget when its measured drop plus one standard error of that drop does (``MARGIN_Z``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compressors.errors import InvalidSpec
from compressors.methods import Method, Trained
from compressors.methods.registry import Weighting
from compressors.onnx import metrics
from compressors.onnx.ranks import Target
from compressors.onnx.result import CompressionResult

START = 0.9  # the first target tried
STEP = 2**-0.5  # coarse grid spacing
LOWEST = 1 / 256  # the coarse walk stops here
BISECTIONS = 5  # after the walk: resolution 2^(1/2) / 2^5, about 1.1%
MAX_SEARCH_SAMPLES = 2048
# a cut keeps the budget when its drop plus this many standard errors does: the search split
# is a sample, and a cut chosen at the edge of the budget on it overshoots on fresh data
MARGIN_Z = 1.0


@dataclass
class SearchSplit:
    """The samples the search scores on, and the original model's score there."""

    x: np.ndarray
    y: np.ndarray | None  # labels; None: score agreement with the original
    reference: np.ndarray  # the original model's outputs on x

    @classmethod
    def of(cls, original: Any, x: np.ndarray, y: np.ndarray | None) -> SearchSplit:
        if len(x) > MAX_SEARCH_SAMPLES:
            keep = np.linspace(0, len(x) - 1, MAX_SEARCH_SAMPLES).astype(np.int64)
            x, y = x[keep], None if y is None else y[keep]
        return cls(x, y, metrics.predict(original, x))

    def score(self, outputs: np.ndarray) -> float:
        return float(np.mean(self.correct(outputs)))

    def correct(self, outputs: np.ndarray) -> np.ndarray:
        truth = self.y if self.y is not None else self.reference.argmax(axis=1)
        return np.asarray(outputs.argmax(axis=1) == truth)

    def drop_bound(self, outputs: np.ndarray) -> tuple[float, float]:
        """The drop in score against the original, and that drop plus MARGIN_Z standard errors
        of it (paired: only samples where the two models disagree on correctness count)."""
        mine, theirs = self.correct(outputs), self.correct(self.reference)
        drop = float(np.mean(theirs) - np.mean(mine))
        differ = np.asarray(mine != theirs, dtype=np.float64)
        n = len(mine)
        spread = float(np.sqrt(max(differ.mean() - drop**2, 0.0) / max(n - 1, 1)))
        return drop, drop + MARGIN_Z * spread


@dataclass
class Search:
    max_drop: float
    metric: str  # "macs" or "params": what the targets are ratios of
    baseline: float  # the original's score on the search split
    trace: list[dict[str, float | bool]] = field(default_factory=list)

    def as_dict(self, chosen: float, samples: int, scored: str) -> dict[str, Any]:
        return {
            "max_drop": self.max_drop,
            "metric": self.metric,
            "scored": scored,
            "search_samples": samples,
            "baseline": self.baseline,
            "chosen_target": chosen,
            "trace": self.trace,
        }


def search(
    trained: Trained, method: Method, weighting: Weighting, split: SearchSplit, max_drop: float
) -> tuple[CompressionResult, dict[str, Any]]:
    """The cut at the smallest target whose drop on ``split`` is at most ``max_drop``."""
    found = Search(max_drop, method.sweep_metric, split.score(split.reference))
    best: tuple[float, CompressionResult] | None = None
    failed: float | None = None
    target = START
    while target >= LOWEST:
        result = _try(trained, weighting, split, found, target)
        if result is None:
            failed = target
            break
        best = (target, result)
        target *= STEP
    if best is None:
        first = found.trace[0]
        lost = f"lost {found.baseline - float(first['score']):.4f}" if "score" in first else "is unreachable"
        raise InvalidSpec(
            f"no cut keeps the drop within {max_drop:g}: even {START:g} of the {found.metric} {lost}; "
            "allow a larger max_drop."
        )
    low, high = failed, best[0]
    for _ in range(BISECTIONS if low is not None else 0):
        assert low is not None
        middle = math.sqrt(low * high)
        result = _try(trained, weighting, split, found, middle)
        if result is None:
            low = middle
        else:
            best, high = (middle, result), middle
    scored = "top-1 accuracy" if split.y is not None else "top-1 agreement with the original"
    return best[1], found.as_dict(round(best[0], 6), len(split.x), scored)


def _try(
    trained: Trained, weighting: Weighting, split: SearchSplit, found: Search, target: float
) -> CompressionResult | None:
    """The cut at ``target`` when it keeps the budget, else None; either way, traced."""
    try:
        result = trained.cut(Target(target, found.metric), weighting)
    except InvalidSpec:
        found.trace.append({"target": round(target, 6), "reachable": False})
        return None
    outputs = metrics.predict(result.model, split.x)
    score = split.score(outputs)
    drop, bound = split.drop_bound(outputs)
    kept = bound <= found.max_drop + 1e-12
    ratio = result.macs_after / max(result.macs_before, 1)
    found.trace.append(
        {
            "target": round(target, 6),
            "macs_ratio": ratio,
            "score": score,
            "drop": drop,
            "drop_bound": bound,
            "within": kept,
            "reachable": True,
        }
    )
    return result if kept else None
