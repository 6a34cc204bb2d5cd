"""Datasets: a plain ``.npz`` (never unpickled) or the built-in ``digits``, checked against
the model's input before any work starts.

An ``.npz`` is checked from its array headers and opened memory-mapped
(``compressors.intake.npz``). Keys: ``x`` (float, shaped like the model input without the batch dimension),
optional ``y`` (integer class labels), optional ``x_val``/``y_val``. Without ``x_val`` a
seeded 20% of ``x`` is held out for evaluation when training, and all of ``x`` is used
when nothing is trained.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compressors.errors import DatasetRejected
from compressors.intake.npz import open_array, read_headers
from compressors.onnx.inspection import TensorSpec

MAX_DATASET_BYTES = 4 << 30  # unpacked, over all arrays
HOLDOUT = 0.2


@dataclass
class Dataset:
    name: str
    sha256: str
    x: np.ndarray  # training inputs, float32
    y: np.ndarray | None  # int64 labels, or None (distillation / fidelity only)
    x_val: np.ndarray
    y_val: np.ndarray | None
    held_out: bool  # x_val was split off x rather than given

    @property
    def labelled(self) -> bool:
        return self.y is not None

    @property
    def num_classes(self) -> int | None:
        if self.y is None:
            return None
        labels = self.y if self.y_val is None else np.concatenate([self.y, self.y_val])
        return int(labels.max()) + 1

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x.shape[1:])

    def all_inputs(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Every sample, for evaluation when nothing is trained on them."""
        if self.held_out:
            x = np.concatenate([self.x, self.x_val])
            y = None if self.y is None or self.y_val is None else np.concatenate([self.y, self.y_val])
            return x, y
        return self.x_val, self.y_val


def load_dataset(source: str | Path, model_input: TensorSpec, seed: int = 0) -> Dataset:
    """``"digits"`` or a path to an ``.npz``; shaped and checked for ``model_input``."""
    if str(source) == "digits":
        return _digits(model_input, seed)
    return _npz(Path(source), model_input, seed)


def _digits(model_input: TensorSpec, seed: int) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    sample = model_input.shape[1:]
    if len(sample) == 3:
        x = x.reshape(-1, 1, 8, 8)
    elif len(sample) != 1:
        raise DatasetRejected(
            f"the model input {model_input.name!r} has shape {model_input.shape}; the built-in "
            "digits set fits inputs shaped (N, 64) or (N, 1, 8, 8)."
        )
    _check_shape("digits", x, model_input)
    digest = hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()
    return _split("digits", digest, x, y, None, None, seed)


def _npz(path: Path, model_input: TensorSpec, seed: int) -> Dataset:
    headers = read_headers(path, MAX_DATASET_BYTES)
    if "x" not in headers:
        raise DatasetRejected(f"the .npz has no 'x' array (it has {sorted(headers)}); name the inputs 'x'.")
    for key, header in headers.items():
        if key in ("x", "x_val") and header.dtype.kind != "f":
            raise DatasetRejected(f"'{key}' has dtype {header.dtype}; inputs must be float32.")
    arrays = {key: open_array(path, header) for key, header in headers.items()}
    x = _inputs("x", arrays["x"], model_input)
    y = _labels("y", arrays.get("y"), len(x))
    x_val = _inputs("x_val", arrays["x_val"], model_input) if "x_val" in arrays else None
    y_val = _labels("y_val", arrays.get("y_val"), len(x_val)) if x_val is not None else None
    if (y is None) != (y_val is None) and x_val is not None:
        raise DatasetRejected("give labels for both 'x' and 'x_val', or for neither.")
    return _split(path.name, _sha256(path), x, y, x_val, y_val, seed)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _inputs(key: str, array: np.ndarray, model_input: TensorSpec) -> np.ndarray:
    if not np.issubdtype(array.dtype, np.floating):
        raise DatasetRejected(f"'{key}' has dtype {array.dtype}; inputs must be float32.")
    if len(array) == 0:
        raise DatasetRejected(f"'{key}' is empty; give at least one sample.")
    array = array.astype(np.float32, copy=False)
    # in slices: a memory-mapped array is checked without a full-size boolean copy
    step = max(1, (64 << 20) // max(array[:1].nbytes, 1))
    if not all(np.isfinite(array[i : i + step]).all() for i in range(0, len(array), step)):
        raise DatasetRejected(f"'{key}' contains NaN or infinite values; clean the data first.")
    _check_shape(key, array, model_input)
    return array


def _check_shape(key: str, array: np.ndarray, model_input: TensorSpec) -> None:
    expected = model_input.shape[1:]
    got = array.shape[1:]
    fits = len(expected) == len(got) and all(
        not isinstance(e, int) or e == g for e, g in zip(expected, got, strict=True)
    )
    if not fits:
        wanted = ", ".join(str(d) for d in ["N", *expected])
        raise DatasetRejected(
            f"'{key}' has samples shaped {tuple(got)} but the model input "
            f"{model_input.name!r} takes ({wanted}); reshape the data to match."
        )


def _labels(key: str, array: np.ndarray | None, count: int) -> np.ndarray | None:
    if array is None:
        return None
    if not np.issubdtype(array.dtype, np.integer) or array.ndim != 1:
        raise DatasetRejected(f"'{key}' must be a 1-D array of integer class labels (int64).")
    if len(array) != count:
        raise DatasetRejected(f"'{key}' has {len(array)} labels for {count} inputs; they must match.")
    if array.min() < 0:
        raise DatasetRejected(f"'{key}' holds negative labels; classes are numbered from 0.")
    return array.astype(np.int64)


def _split(
    name: str,
    digest: str,
    x: np.ndarray,
    y: np.ndarray | None,
    x_val: np.ndarray | None,
    y_val: np.ndarray | None,
    seed: int,
) -> Dataset:
    if x_val is not None:
        return Dataset(name, digest, x, y, x_val, y_val, held_out=False)
    if len(x) < 2:
        return Dataset(name, digest, x, y, x, y, held_out=False)
    order = np.random.default_rng(seed).permutation(len(x))
    cut = max(1, round(len(x) * HOLDOUT))
    val, train = order[:cut], order[cut:]
    return Dataset(
        name,
        digest,
        x[train],
        None if y is None else y[train],
        x[val],
        None if y is None else y[val],
        held_out=True,
    )
