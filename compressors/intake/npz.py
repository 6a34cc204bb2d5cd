"""An ``.npz`` read from its headers: what each array declares (dtype, shape, bytes) is checked
against a cap before any array is read, and arrays are then opened memory-mapped, never
loaded whole. A few megabytes of deflated zeros can declare gigabytes; ``np.load`` followed
by indexing would materialize all of it in the caller's memory.
"""

from __future__ import annotations

import math
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import numpy as np

from compressors.errors import DatasetRejected
from compressors.intake.loading import check_zip_layout

MAX_ARRAYS = 16  # x, y, x_val, y_val and per-input arrays; anything more is not a dataset
_HEADER_LIMIT = 10_000  # bytes of one .npy header (numpy's own default cap)


@dataclass(frozen=True)
class ArrayHeader:
    """One array as its ``.npy`` header declares it."""

    key: str
    dtype: np.dtype
    shape: tuple[int, ...]
    fortran_order: bool
    nbytes: int  # what the header's shape and dtype need
    header_bytes: int  # the .npy header in front of the data

    def as_dict(self) -> dict[str, object]:
        return {"dtype": self.dtype.str, "shape": list(self.shape), "nbytes": self.nbytes}


def read_headers(path: Path, max_bytes: int) -> dict[str, ArrayHeader]:
    """Every array's header; refuses object arrays, sizes that disagree with the archive, and
    a total over ``max_bytes``. Reads a few hundred bytes per array, whatever the file holds."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            if len(infos) > MAX_ARRAYS:
                raise DatasetRejected(
                    f"the .npz holds {len(infos)} entries, over the limit of {MAX_ARRAYS}; "
                    "store only x, y, x_val and y_val."
                )
            try:
                check_zip_layout(archive, infos)
            except Exception as exc:
                raise DatasetRejected(f"the .npz is malformed: {exc}") from exc
            headers = {h.key: h for h in (_header(archive, info) for info in infos)}
    except DatasetRejected:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DatasetRejected("the dataset is not a readable .npz file; save it with numpy.savez.") from exc
    total = sum(h.nbytes for h in headers.values())
    if total > max_bytes:
        raise DatasetRejected(
            f"the dataset's arrays declare {total:,} bytes, over the {max_bytes:,}-byte limit; "
            "send fewer samples."
        )
    return headers


def _header(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> ArrayHeader:
    if not info.filename.endswith(".npy") or "/" in info.filename:
        raise DatasetRejected(f"the .npz entry {info.filename!r} is not an array; save with numpy.savez.")
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)  # type: ignore[no-untyped-call]
        reader = (
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = reader(f, max_header_size=_HEADER_LIMIT)
        header_bytes = f.tell()
    key = info.filename[: -len(".npy")]
    if dtype.hasobject:
        raise DatasetRejected(
            f"'{key}' is an object array, which would need unpickling; store plain numeric arrays."
        )
    if any(d < 0 for d in shape):
        raise DatasetRejected(f"'{key}' declares a negative dimension; the file is corrupt.")
    nbytes = math.prod(shape) * dtype.itemsize
    if info.file_size != header_bytes + nbytes:
        raise DatasetRejected(
            f"'{key}' declares {nbytes:,} bytes of data but its entry holds "
            f"{info.file_size - header_bytes:,}; the file is corrupt."
        )
    return ArrayHeader(key, dtype, tuple(shape), bool(fortran), nbytes, header_bytes)


def open_array(path: Path, header: ArrayHeader, spill: Path | None = None) -> np.ndarray:
    """The array, memory-mapped read-only. A stored (``numpy.savez``) entry is mapped in place;
    a deflated one (``savez_compressed``) is first unpacked into an unnamed file in ``spill``
    (default: beside the .npz), counting bytes so that it can never exceed its header."""
    order: Literal["C", "F"] = "F" if header.fortran_order else "C"
    if header.nbytes == 0:
        return np.zeros(header.shape, header.dtype, order=order)
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(header.key + ".npy")
        if info.compress_type == zipfile.ZIP_STORED:
            start = _data_offset(archive, info) + header.header_bytes
            return np.memmap(
                path, dtype=header.dtype, mode="r", offset=start, shape=header.shape, order=order
            )
        with archive.open(info) as src, tempfile.TemporaryFile(dir=spill or path.parent) as out:
            src.read(header.header_bytes)
            _copy_counted(src, out, header.nbytes, header.key)
            out.flush()
            return np.memmap(out, dtype=header.dtype, mode="r", shape=header.shape, order=order)  # type: ignore[call-overload]


def _data_offset(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> int:
    assert archive.fp is not None
    archive.fp.seek(info.header_offset + 26)
    name_length, extra_length = np.frombuffer(archive.fp.read(4), "<u2")
    return info.header_offset + 30 + int(name_length) + int(extra_length)


def _copy_counted(src: IO[bytes], out: IO[bytes], expected: int, key: str) -> None:
    written = 0
    for block in iter(lambda: src.read(1 << 20), b""):
        written += len(block)
        if written > expected:
            raise DatasetRejected(f"'{key}' holds more data than its header declares; the file is corrupt.")
        out.write(block)
    if written != expected:
        raise DatasetRejected(f"'{key}' holds less data than its header declares; the file is corrupt.")


def describe(path: Path, max_bytes: int, holdout: float) -> dict[str, object]:
    """What a dataset upload holds, from its headers alone: sample count and shape, labels,
    validation split. One array per model input, named after it (``x`` for a single input);
    the fit to a model is checked per job."""
    headers = read_headers(path, max_bytes)
    inputs = {k: h for k, h in headers.items() if k not in ("y", "y_val") and not k.endswith("_val")}
    for key, header in inputs.items():
        numeric = header.dtype.kind in "fiub"
        if len(header.shape) < 2 or not numeric or header.shape[0] == 0:
            raise DatasetRejected(
                f"'{key}' must be a numeric array shaped (N, ...) with N >= 1: one array per model "
                "input, named after it (x for a single input)."
            )
    if not inputs:
        raise DatasetRejected(
            "the .npz needs one array per model input, named after it (x for a single input)."
        )
    counts = {h.shape[0] for h in inputs.values()}
    if len(counts) > 1:
        raise DatasetRejected(f"the input arrays hold different numbers of samples: {sorted(counts)}.")
    x = inputs.get("x", next(iter(inputs.values())))
    for key in ("y", "y_val"):
        if key in headers and (len(headers[key].shape) not in (1, 2) or headers[key].dtype.kind not in "iu"):
            raise DatasetRejected(
                f"'{key}' must hold integer class labels: one per sample, or one per position (N, seq)."
            )
    if "y" in headers and headers["y"].shape[0] != x.shape[0]:
        raise DatasetRejected(
            f"'y' has {headers['y'].shape[0]} labels for {x.shape[0]} inputs; they must match."
        )
    val = next((h for k, h in headers.items() if k.endswith("_val") and k != "y_val"), None)
    return {
        "samples": x.shape[0],
        "sample_shape": [int(d) for d in x.shape[1:]],
        "labelled": "y" in headers,
        "validation_samples": val.shape[0] if val is not None else round(x.shape[0] * holdout),
        "arrays": {key: h.as_dict() for key, h in sorted(headers.items())},
    }
