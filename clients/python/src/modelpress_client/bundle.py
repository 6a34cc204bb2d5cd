"""An ``.onnx`` file whose weights live in external-data files, zipped with them for upload.

``torch.onnx.export(..., dynamo=True)`` writes ``model.onnx`` and ``model.onnx.data`` beside it;
the graph names each file in its tensors' ``external_data`` ``location``. The client reads those
names from the protobuf itself (the ``onnx`` package is not a dependency: only the few fields on
the way to a tensor are decoded, and the bytes are memory-mapped, not read) and zips the graph
with every file it names, which is the bundle the server takes.
"""

from __future__ import annotations

import mmap
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from modelpress_client.errors import ModelpressError

# ONNX field numbers (onnx.proto) on the paths from a model to its tensors
_MODEL = {7: "graph", 25: "function"}
_GRAPH = {1: "node", 5: "tensor", 15: "sparse"}
_NODE = {5: "attribute"}
_FUNCTION = {7: "node"}
_ATTRIBUTE = {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"}
_SPARSE = {1: "tensor", 2: "tensor"}
_CHILDREN = {
    "model": _MODEL,
    "graph": _GRAPH,
    "node": _NODE,
    "function": _FUNCTION,
    "attribute": _ATTRIBUTE,
    "sparse": _SPARSE,
}
_TENSOR_EXTERNAL_DATA, _ENTRY_KEY, _ENTRY_VALUE = 13, 1, 2
_MAX_DEPTH = 64  # subgraphs nest (If, Loop); a file that nests deeper is not a model


class BundleError(ModelpressError):
    """The model names external data that cannot be bundled (missing, or outside its folder)."""


class NotOnnx(ValueError):
    """The file does not parse as an ONNX protobuf; the server says what is wrong with it."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise NotOnnx("a truncated protobuf varint")
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def _fields(buf: memoryview) -> Iterator[tuple[int, memoryview | None]]:
    """(field number, payload of a length-delimited field or None) for each field of a message."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
            yield number, None
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            yield number, None
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise NotOnnx("a field runs past its end")
            yield number, buf[pos : pos + size]
            pos += size
        else:
            raise NotOnnx(f"protobuf wire type {wire}")


def _locations(buf: memoryview, kind: str, depth: int = 0) -> Iterator[str]:
    if depth > _MAX_DEPTH:
        raise NotOnnx("subgraphs nested deeper than any real model")
    if kind == "tensor":
        for number, payload in _fields(buf):
            if number == _TENSOR_EXTERNAL_DATA and payload is not None:
                entry = {n: bytes(p) for n, p in _fields(payload) if p is not None}
                if entry.get(_ENTRY_KEY) == b"location" and _ENTRY_VALUE in entry:
                    yield entry[_ENTRY_VALUE].decode("utf-8", "replace")
        return
    children = _CHILDREN[kind]
    for number, payload in _fields(buf):
        if payload is not None and number in children:
            yield from _locations(payload, children[number], depth + 1)


def external_data(model: str | Path) -> list[str]:
    """The external-data files an ``.onnx`` file names, as written in it (relative paths);
    raises :class:`NotOnnx` for a file that is not an ONNX protobuf."""
    path = Path(model)
    if path.stat().st_size == 0:
        return []
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = memoryview(mapped)
        try:
            return sorted(set(_locations(view, "model")))
        finally:
            view.release()


def _member(folder: Path, location: str) -> Path:
    relative = PurePosixPath(location.replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise BundleError(f"the model names external data '{location}' outside its folder; keep it beside.")
    path = folder.joinpath(*relative.parts)
    if path.is_symlink() or not path.is_file():
        raise BundleError(
            f"the model's external data '{location}' is not a file beside {folder}; "
            "export again, or zip the .onnx with its data yourself."
        )
    return path


def bundle(model: str | Path, target: str | Path) -> Path:
    """Zip ``model`` with the external-data files it names, at ``target``; returns ``target``."""
    source, out = Path(model), Path(target)
    members = [(source, source.name)]
    members += [(_member(source.parent, loc), loc.replace("\\", "/")) for loc in external_data(source)]
    # stored, not deflated: weights hardly compress, and the server caps compression ratios
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for path, name in members:
            archive.write(path, name)
    return out
