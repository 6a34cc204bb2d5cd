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


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_arrays_are_read_memory_mapped_whether_stored_or_deflated(tmp_path: Path, save) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 64)).astype(np.float32), rng.integers(0, 10, 40)
    path = tmp_path / "d.npz"
    save(path, x=x, y=y, x_val=x[:8], y_val=y[:8])
    data = load_dataset(path, FLAT)
    assert isinstance(data.x_val, np.memmap)  # not a copy in memory
    np.testing.assert_array_equal(data.x_val, x[:8])
    np.testing.assert_array_equal(data.x, x)
    assert data.y is not None and list(data.y) == list(y)


def test_a_dataset_bomb_is_refused_from_its_headers_before_anything_is_unpacked(tmp_path: Path) -> None:
    from compressors.intake.npz import read_headers
    from tests import bombs

    path = bombs.npz_bomb(tmp_path / "bomb.npz", 64 << 20)  # declares 64 MiB, weighs far less
    assert path.stat().st_size < 1 << 20
    headers = read_headers(path, 1 << 30)
    assert headers["x"].shape == ((64 << 20) // 256, 64) and headers["x"].nbytes == 64 << 20
    with pytest.raises(DatasetRejected, match="declare"):
        read_headers(path, 32 << 20)


def test_a_header_that_disagrees_with_its_entry_size_is_refused(tmp_path: Path) -> None:
    import zipfile

    path = tmp_path / "lie.npz"
    with zipfile.ZipFile(path, "w") as archive, archive.open("x.npy", "w") as out:
        header = {"descr": "<f4", "fortran_order": False, "shape": (1 << 20, 64)}
        np.lib.format.write_array_header_1_0(out, header)
        out.write(np.zeros((4, 64), np.float32).tobytes())  # 1 KiB where 256 MiB are declared
    with pytest.raises(DatasetRejected, match="corrupt"):
        load_dataset(path, FLAT)
