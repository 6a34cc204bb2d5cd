"""Small reference models made here, never downloaded: for the demo, the tests and the benches.

Each is exported the way users export theirs, ``torch.onnx.export(..., dynamo=True)``,
which writes the graph plus ``NAME.onnx.data`` (external data) at opset 18+.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn


class DigitsMLP(nn.Module):
    """64-512-512-10 by default: the MLP of the reviewers' experiment."""

    def __init__(self, hidden: Sequence[int] = (512, 512), classes: int = 10) -> None:
        super().__init__()
        sizes = [64, *hidden]
        layers: list[nn.Module] = []
        for fan_in, fan_out in itertools.pairwise(sizes):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DigitsCNN(nn.Module):
    """A small CNN for 1×8×8 digits: two 3×3 conv blocks and two linear layers."""

    def __init__(self, width: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * 16, 128), nn.ReLU(), nn.Linear(128, classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def digits_arrays(image: bool) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    return (x.reshape(-1, 1, 8, 8) if image else x), bunch.target.astype(np.int64)


def train_digits(model: nn.Module, image: bool, epochs: int = 15, seed: int = 0) -> float:
    """Plain Adam training on 80% of digits; returns accuracy on the other 20%."""
    torch.manual_seed(seed)
    x, y = digits_arrays(image)
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(len(x) * 0.2)
    xt, yt = torch.from_numpy(x[order[cut:]]), torch.from_numpy(y[order[cut:]])
    xv, yv = torch.from_numpy(x[order[:cut]]), torch.from_numpy(y[order[:cut]])
    fit(model, xt, yt, epochs)
    with torch.no_grad():
        return float((model(xv).argmax(1) == yv).float().mean())


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> None:
    """Adam (lr 1e-3), cross-entropy, shuffled batches of 64; leaves ``model`` in eval mode.
    Shuffles with torch's global generator: seed it first for a repeatable run."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()


def export(
    model: nn.Module,
    example: torch.Tensor,
    path: Path,
    dynamic_batch: bool = True,
    external_data: bool = True,
    optimize: bool = True,
) -> Path:
    """``torch.onnx.export(dynamo=True)``, quietly; returns the .onnx path. ``optimize=False``
    keeps BatchNormalization nodes that the optimizer would fold into the convolutions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    dynamic = ({0: "batch"},) if dynamic_batch else None  # positional: any forward argument name
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=True,
            input_names=["x"],
            dynamic_shapes=dynamic,
            external_data=external_data,
            optimize=optimize,
        )
    return path


def bundle(onnx_path: Path, zip_path: Path) -> Path:
    """Zip the .onnx with its external-data files, as a user uploads them."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(onnx_path.parent.iterdir()):
            if file == onnx_path or file.name.startswith(onnx_path.name + "."):
                archive.write(file, file.name)
    return zip_path
