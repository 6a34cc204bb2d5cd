"""AIMET's arm of bench/peers.py, run in a Python that has aimet-torch (its own venv: AIMET pins
its own dependencies): weight SVD (MLP) and spatial SVD (CNN) with AIMET's greedy per-layer
ratio selection, at MACs targets 0.5 / 0.25 / 0.125, no fine-tuning, on the same trained weights.

    $AIMET_PYTHON bench/peers_aimet.py bench/.cache mlp,cnn    # prints one JSON line last
"""

from __future__ import annotations

import json
import sys
import time
from decimal import Decimal
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from examples import digits  # noqa: E402

TARGETS = (0.5, 0.25, 0.125)


def held_out(image: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The 20% of digits modelpress reports on (the same seeded split as load_dataset)."""
    x, y = digits.digits_arrays(image)
    order = np.random.default_rng(0).permutation(len(x))
    cut = max(1, round(len(x) * 0.2))
    return torch.from_numpy(x[order[:cut]]), torch.from_numpy(y[order[:cut]])


def macs(model: torch.nn.Module, shape: tuple[int, ...]) -> int:
    """Conv2d and Linear multiply-accumulates for one sample, counted with forward hooks."""
    total = 0

    def hook(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, torch.nn.Linear):
            total += module.in_features * module.out_features
        elif isinstance(module, torch.nn.Conv2d):
            kh, kw = module.kernel_size
            total += output.numel() * (module.in_channels // module.groups) * kh * kw

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
    ]
    with torch.no_grad():
        model(torch.zeros(1, *shape))
    for h in handles:
        h.remove()
    return total


def compress(model: torch.nn.Module, image: bool, target: float, scheme: str) -> torch.nn.Module:
    from aimet_common.defs import CompressionScheme, CostMetric, GreedySelectionParameters, RankSelectScheme
    from aimet_torch.compress import ModelCompressor
    from aimet_torch.defs import SpatialSvdParameters, WeightSvdParameters

    x, y = held_out(image)

    def evaluate(candidate: torch.nn.Module, iterations: object, use_cuda: bool = False) -> float:
        candidate.eval()
        with torch.no_grad():
            return float((candidate(x).argmax(1) == y).float().mean())

    greedy = GreedySelectionParameters(target_comp_ratio=Decimal(str(target)), num_comp_ratio_candidates=10)
    first = next(m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    if scheme == "spatial_svd":
        params = SpatialSvdParameters(
            SpatialSvdParameters.Mode.auto,
            SpatialSvdParameters.AutoModeParams(greedy, modules_to_ignore=[first]),
        )
        kind = CompressionScheme.spatial_svd
    else:
        params = WeightSvdParameters(
            WeightSvdParameters.Mode.auto,
            WeightSvdParameters.AutoModeParams(RankSelectScheme.greedy, greedy, modules_to_ignore=[first]),
        )
        kind = CompressionScheme.weight_svd
    shape = (1, 1, 8, 8) if image else (1, 64)
    compressed, _ = ModelCompressor.compress_model(model, evaluate, 1, shape, kind, CostMetric.mac, params)
    return compressed


def main() -> None:
    cache, names = Path(sys.argv[1]), sys.argv[2].split(",")
    rows = []
    for name in names:
        image = name == "cnn"
        schemes = ("spatial_svd",) if image else ("weight_svd",)
        for scheme in schemes:
            for target in TARGETS:
                model = digits.DigitsCNN() if image else digits.DigitsMLP()
                model.load_state_dict(torch.load(cache / f"peers_{name}.pt", weights_only=True))
                model.eval()
                shape = (1, 8, 8) if image else (64,)
                before = macs(model, shape)
                t0 = time.perf_counter()
                try:
                    compressed = compress(model, image, target, scheme)
                except Exception as exc:  # an arm that fails is reported, not fatal
                    rows.append([name, scheme, target, "failed", type(exc).__name__, 0])
                    continue
                x, y = held_out(image)
                with torch.no_grad():
                    accuracy = float((compressed(x).argmax(1) == y).float().mean())
                ratio = macs(compressed, shape) / before
                rows.append(
                    [
                        name,
                        scheme,
                        target,
                        round(ratio, 4),
                        round(accuracy, 4),
                        round(time.perf_counter() - t0, 1),
                    ]
                )
    columns = ["scheme", "target MACs", "MACs after / before", "top-1", "seconds"]
    print(json.dumps({"columns": columns, "rows": rows}))


if __name__ == "__main__":
    main()
