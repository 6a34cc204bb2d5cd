"""Datasets are checked against the model input before any work starts; nothing is unpickled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compressors.errors import DatasetRejected
from compressors.intake.datasets import load_dataset
from compressors.onnx.inspection import TensorSpec

FLAT = TensorSpec("x", "float", ["batch", 64])
IMAGE = TensorSpec("x", "float", ["batch", 1, 8, 8])


def _npz(tmp_path: Path, **arrays: np.ndarray) -> Path:
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    return path


def test_digits_is_shaped_for_the_model() -> None:
    flat, image = load_dataset("digits", FLAT), load_dataset("digits", IMAGE)
    assert flat.sample_shape == (64,) and image.sample_shape == (1, 8, 8)
    assert len(flat.x) + len(flat.x_val) == 1797
    assert flat.num_classes == 10 and flat.x.dtype == np.float32


def test_digits_refuses_a_model_it_cannot_fit() -> None:
    with pytest.raises(DatasetRejected, match="digits"):
        load_dataset("digits", TensorSpec("x", "float", ["batch", 3, 32, 32, 1]))


def test_wrong_shape_names_the_expected_one(tmp_path: Path) -> None:
    path = _npz(tmp_path, x=np.zeros((5, 63), np.float32))
    with pytest.raises(DatasetRejected, match=r"\(N, 64\)"):
        load_dataset(path, FLAT)


def test_integer_inputs_and_bad_labels_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetRejected, match="float32"):
        load_dataset(_npz(tmp_path, x=np.zeros((5, 64), np.int32)), FLAT)
    with pytest.raises(DatasetRejected, match="labels"):
        load_dataset(_npz(tmp_path, x=np.zeros((5, 64), np.float32), y=np.zeros(4, np.int64)), FLAT)
    with pytest.raises(DatasetRejected, match="integer"):
        load_dataset(_npz(tmp_path, x=np.zeros((5, 64), np.float32), y=np.zeros(5, np.float32)), FLAT)
    with pytest.raises(DatasetRejected, match="NaN"):
        load_dataset(_npz(tmp_path, x=np.full((5, 64), np.nan, np.float32)), FLAT)


def test_object_arrays_are_never_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DatasetRejected, match="unpickling"):
        load_dataset(path, FLAT)


def test_not_an_npz(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    path.write_bytes(b"hello")
    with pytest.raises(DatasetRejected, match=r"numpy\.savez"):
        load_dataset(path, FLAT)


def test_unlabelled_data_and_validation_split(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((50, 64)).astype(np.float32)
    data = load_dataset(_npz(tmp_path, x=x), FLAT)
    assert not data.labelled and data.held_out and len(data.x_val) == 10
    given = load_dataset(
        _npz(tmp_path, x=x, y=np.zeros(50, np.int64), x_val=x[:7], y_val=np.ones(7, np.int64)), FLAT
    )
    assert not given.held_out and len(given.x_val) == 7 and given.num_classes == 2
