"""Datasets: a plain ``.npz`` (never unpickled) or the built-in ``digits``, checked against
the model's input before any work starts.

An ``.npz`` is checked from its array headers and opened memory-mapped
(``compressors.intake.npz``); it is never loaded whole. Keys: each model input under its own
graph input name (for a model with a single input, ``x`` may stand in for that name), shaped
like the input without the batch dimension: floating point for float inputs,
integers for integer inputs (token ids, attention masks),
cast to the input's own dtype. Optional ``y``: integer class labels, one per sample
(``(N,)``) or one per position (``(N, seq)``, for a language model's ``(N, seq, vocab)``
logits). Optional validation split: the same keys with ``_val`` (``x_val``, ``input_ids_val``,
``y_val``). Without it a seeded 20% of the samples is held out for evaluation when training,
and every sample is used when nothing is trained.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
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
    names: tuple[str, ...] = ()  # the model's inputs in graph order; x feeds names[0]
    more: dict[str, np.ndarray] = field(default_factory=dict)  # the other inputs, training rows
    more_val: dict[str, np.ndarray] = field(default_factory=dict)  # ... and validation rows

    def inputs(self, val: bool = False) -> list[np.ndarray]:
        """Every model input of the training (or validation) rows, in graph order."""
        first, rest = (self.x_val, self.more_val) if val else (self.x, self.more)
        return [first, *(rest[name] for name in self.names[1:])]

    @property
    def sample_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per model input, the shape of one sample."""
        names = self.names or ("x",)
        return {
            name: tuple(int(d) for d in a.shape[1:]) for name, a in zip(names, self.inputs(), strict=True)
        }

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

    def all_inputs(self) -> tuple[list[np.ndarray], np.ndarray | None]:
        """Every sample, for evaluation when nothing is trained on them."""
        if self.held_out:
            x = [np.concatenate([a, b]) for a, b in zip(self.inputs(), self.inputs(val=True), strict=True)]
            y = None if self.y is None or self.y_val is None else np.concatenate([self.y, self.y_val])
            return x, y
        return self.inputs(val=True), self.y_val


def load_dataset(
    source: str | Path, model_inputs: TensorSpec | Sequence[TensorSpec], seed: int = 0
) -> Dataset:
    """``"digits"`` or a path to an ``.npz``; shaped and checked for the model's inputs."""
    specs = [model_inputs] if isinstance(model_inputs, TensorSpec) else list(model_inputs)
    if str(source) == "digits":
        if len(specs) != 1:
            names = ", ".join(repr(s.name) for s in specs)
            raise DatasetRejected(
                f"the model takes {len(specs)} inputs ({names}); the built-in digits set fits a "
                "single-input model. Give an .npz with one array per input name."
            )
        return _digits(specs[0], seed)
    return _npz(Path(source), specs, seed)


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
    return _split("digits", digest, x, y, None, None, seed, (model_input.name,))


def _npz(path: Path, specs: list[TensorSpec], seed: int) -> Dataset:
    arrays = _read_npz(path)
    train = _model_inputs(arrays, specs, "")
    x = train[specs[0].name]
    y = _labels("y", arrays.get("y"), len(x))
    val = _model_inputs(arrays, specs, "_val") if _has_split(arrays, specs) else None
    y_val = _labels("y_val", arrays.get("y_val"), len(val[specs[0].name])) if val is not None else None
    if (y is None) != (y_val is None) and val is not None:
        raise DatasetRejected("give labels for both 'x' and 'x_val', or for neither.")
    digest = _sha256(path)
    names = tuple(s.name for s in specs)
    return _split(path.name, digest, train, y, val, y_val, seed, names)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array, its header checked against the cap first, opened memory-mapped."""
    headers = read_headers(path, MAX_DATASET_BYTES)
    return {key: open_array(path, header) for key, header in headers.items()}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _key(arrays: dict[str, np.ndarray], specs: list[TensorSpec], spec: TensorSpec, suffix: str) -> str | None:
    """The .npz key holding ``spec``'s samples: its own name, or ``x`` for a single input."""
    for key in (spec.name + suffix, *(["x" + suffix] if len(specs) == 1 else [])):
        if key in arrays:
            return key
    return None


def _has_split(arrays: dict[str, np.ndarray], specs: list[TensorSpec]) -> bool:
    return any(_key(arrays, specs, spec, "_val") is not None for spec in specs)


def _model_inputs(
    arrays: dict[str, np.ndarray], specs: list[TensorSpec], suffix: str
) -> dict[str, np.ndarray]:
    """Each model input's array (``suffix`` "" or "_val"), checked and cast to the input's dtype."""
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        key = _key(arrays, specs, spec, suffix)
        if key is None:
            alias = f" (or 'x{suffix}')" if len(specs) == 1 else ""
            raise DatasetRejected(
                f"the .npz has no '{spec.name}{suffix}'{alias} for the model input {spec.name!r} "
                f"(it has {sorted(arrays)}); store one array per model input, named after it."
            )
        out[spec.name] = _inputs(key, arrays[key], spec)
    counts = {len(a) for a in out.values()}
    if len(counts) > 1:
        raise DatasetRejected(
            "the model inputs have different sample counts: "
            + ", ".join(f"{k}: {len(a)}" for k, a in out.items())
        )
    return out


INTEGER_INPUTS = {"int64": np.int64, "int32": np.int32, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_}


def _inputs(key: str, array: np.ndarray, model_input: TensorSpec) -> np.ndarray:
    if len(array) == 0:
        raise DatasetRejected(f"'{key}' is empty; give at least one sample.")
    wanted = INTEGER_INPUTS.get(model_input.dtype)
    if wanted is not None:
        if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
            raise DatasetRejected(
                f"'{key}' has dtype {array.dtype}; the model input {model_input.name!r} takes "
                f"{model_input.dtype} (token ids, masks): store integers."
            )
        array = array.astype(wanted, copy=False)
    else:
        if not np.issubdtype(array.dtype, np.floating):
            raise DatasetRejected(
                f"'{key}' has dtype {array.dtype}; the model input {model_input.name!r} takes "
                f"{model_input.dtype}: inputs must be float32."
            )
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
    if not np.issubdtype(array.dtype, np.integer) or array.ndim not in (1, 2):
        raise DatasetRejected(
            f"'{key}' must hold integer class labels (int64): one per sample, or one per position (N, seq)."
        )
    if len(array) != count:
        raise DatasetRejected(f"'{key}' has {len(array)} labels for {count} inputs; they must match.")
    if array.min() < 0:
        raise DatasetRejected(f"'{key}' holds negative labels; classes are numbered from 0.")
    return array.astype(np.int64)


def _split(
    name: str,
    digest: str,
    x: dict[str, np.ndarray] | np.ndarray,
    y: np.ndarray | None,
    x_val: dict[str, np.ndarray] | np.ndarray | None,
    y_val: np.ndarray | None,
    seed: int,
    names: tuple[str, ...] = ("x",),
) -> Dataset:
    train = x if isinstance(x, dict) else {names[0]: x}
    val = x_val if isinstance(x_val, dict) or x_val is None else {names[0]: x_val}

    def build(
        t: dict[str, np.ndarray],
        ty: np.ndarray | None,
        v: dict[str, np.ndarray],
        vy: np.ndarray | None,
        held: bool,
    ) -> Dataset:
        rest = {k: a for k, a in t.items() if k != names[0]}
        rest_val = {k: a for k, a in v.items() if k != names[0]}
        return Dataset(name, digest, t[names[0]], ty, v[names[0]], vy, held, names, rest, rest_val)

    if val is not None:
        return build(train, y, val, y_val, False)
    count = len(train[names[0]])
    if count < 2:
        return build(train, y, train, y, False)
    order = np.random.default_rng(seed).permutation(count)
    cut = max(1, round(count * HOLDOUT))
    rows, held = order[cut:], order[:cut]
    return build(
        {k: a[rows] for k, a in train.items()},
        None if y is None else y[rows],
        {k: a[held] for k, a in train.items()},
        None if y is None else y[held],
        True,
    )
