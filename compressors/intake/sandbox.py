"""The child side of model validation: ``python -m compressors.intake.sandbox`` reads a JSON request
on stdin and prints one JSON line. It runs under the memory and time limits the parent set
(see ``compressors.intake.loading.validate_in_sandbox``), so whatever the bytes do to the ONNX
parser or onnxruntime, the caller survives.
"""

from __future__ import annotations

import json
import os
import resource
import stat
import sys
from pathlib import Path, PurePosixPath

import numpy as np
import onnx
from onnx import external_data_helper

from compressors.errors import ModelpressError, ModelRejected, ModelTooLarge, UnsafeExternalData
from compressors.intake.loading import Limits
from compressors.onnx.graph import (
    concrete_input_shapes,
    iter_graph_tensors,
    tensor_numel,
    zero_feeds,
)
from compressors.onnx.inspection import ModelInfo, inspect_model

_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def check_model_file(path: Path, limits: Limits) -> ModelInfo:
    """Every check a model must pass before the service or the CLI works on it."""
    head = path.open("rb").read(2)
    if head in _PICKLE_MAGIC:
        raise ModelRejected(
            "the file is a Python pickle (e.g. a torch checkpoint), not an ONNX model; "
            "pickles are never loaded: export the model with torch.onnx.export."
        )
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        _raise_if_out_of_memory(exc)
        raise ModelRejected(
            "the file is not an ONNX model (it does not parse as ONNX protobuf); "
            "check that it is complete and was written by an ONNX exporter."
        ) from exc
    if not model.graph.node or not model.graph.output:
        raise ModelRejected("the ONNX file holds no graph to run; re-export the model.")
    external = _check_tensors(model, path.parent, limits)
    try:
        external_data_helper.load_external_data_for_model(model, str(path.parent))
        onnx.checker.check_model(model if model.ByteSize() < (1 << 31) - (1 << 24) else str(path))
    except Exception as exc:
        _raise_if_out_of_memory(exc)
        raise ModelRejected(f"the model fails the ONNX checker: {_first_line(exc)}") from exc
    _try_onnxruntime(model)
    return inspect_model(model, external_files=external)


def _check_tensors(model: onnx.ModelProto, base: Path, limits: Limits) -> list[str]:
    """Refuse oversized or inconsistent tensor declarations and external data that escapes
    the bundle; return the external-data files the model uses."""
    total = 0
    files: set[str] = set()
    base_real = base.resolve()
    for tensor in iter_graph_tensors(model.graph):
        if any(d < 0 for d in tensor.dims):
            raise ModelRejected(f"tensor {tensor.name!r} declares a negative dimension.")
        numel = tensor_numel(tensor)
        if numel > limits.max_tensor_elements:
            raise ModelTooLarge(
                f"tensor {tensor.name!r} declares {numel:,} elements, over the limit of "
                f"{limits.max_tensor_elements:,}; the model is refused."
            )
        total += numel
        if total > limits.max_total_elements:
            raise ModelTooLarge(
                f"the model declares more than {limits.max_total_elements:,} tensor elements "
                "in all; it is refused."
            )
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            files.add(_check_external(tensor, numel, base_real))
        elif tensor.HasField("raw_data"):
            itemsize = _itemsize(tensor)
            if itemsize and len(tensor.raw_data) != numel * itemsize:
                raise ModelRejected(
                    f"tensor {tensor.name!r} holds {len(tensor.raw_data)} bytes but its shape "
                    f"needs {numel * itemsize}; the file is corrupt."
                )
    for node in model.graph.node:
        if node.op_type == "ConstantOfShape":
            _check_constant_of_shape(model, node, limits)
    return sorted(files)


def _check_external(tensor: onnx.TensorProto, numel: int, base: Path) -> str:
    info = external_data_helper.ExternalDataInfo(tensor)
    location = info.location
    pure = PurePosixPath(location.replace("\\", "/"))
    if not location or pure.is_absolute() or ".." in pure.parts or ":" in location:
        raise UnsafeExternalData(
            f"tensor {tensor.name!r} points at external data {location!r} outside the model's "
            "folder; external data must sit beside the .onnx file."
        )
    target = base.joinpath(*pure.parts)
    try:
        mode = os.lstat(target).st_mode
    except OSError as exc:
        raise UnsafeExternalData(
            f"tensor {tensor.name!r} needs the external-data file {location!r}, which is "
            "missing; upload a .zip holding the .onnx and its data files."
        ) from exc
    if stat.S_ISLNK(mode) or not stat.S_ISREG(mode) or base not in target.resolve().parents:
        raise UnsafeExternalData(
            f"external-data file {location!r} is a link or not a regular file; it is refused."
        )
    length = info.length if info.length else numel * (_itemsize(tensor) or 1)
    if (info.offset or 0) + length > target.stat().st_size:
        raise UnsafeExternalData(
            f"tensor {tensor.name!r} reads past the end of {location!r}; the bundle is incomplete."
        )
    return str(pure)


def _check_constant_of_shape(model: onnx.ModelProto, node: onnx.NodeProto, limits: Limits) -> None:
    from compressors.onnx.graph import constant_array, initializers, producers

    shape = constant_array(node.input[0], initializers(model.graph), producers(model.graph))
    if (
        shape is not None
        and shape.size
        and int(np.prod(shape.astype(np.float64))) > limits.max_tensor_elements
    ):
        raise ModelTooLarge(
            f"node {node.name or 'ConstantOfShape'!r} would create a tensor of "
            f"{int(np.prod(shape.astype(np.float64))):,} elements; the model is refused."
        )


def _itemsize(tensor: onnx.TensorProto) -> int:
    try:
        return int(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize)
    except Exception:
        return 0


def _try_onnxruntime(model: onnx.ModelProto) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        session.run(None, zero_feeds(session, concrete_input_shapes(model, 1)))
    except Exception as exc:
        _raise_if_out_of_memory(exc)
        raise ModelRejected(f"onnxruntime cannot run the model: {_first_line(exc)}") from exc


def _raise_if_out_of_memory(exc: Exception) -> None:
    """protobuf, the checker and onnxruntime report a failed allocation in their own words;
    under the memory cap that means the model is too costly to parse, not malformed."""
    text = str(exc).lower()
    if isinstance(exc, MemoryError) or any(w in text for w in ("alloc", "failed to serialize")):
        raise MemoryError(str(exc)) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def cap_memory(budget: int) -> None:
    """Cap the address space at what this process holds now plus ``budget``. Called once the
    interpreter and the parsing libraries are loaded, so the cap bounds what the model's
    parse and checks take, not Python's own start-up."""
    import onnxruntime  # noqa: F401  (loaded before the cap: it is part of start-up)

    pages = int(Path("/proc/self/statm").read_text().split()[0])
    cap = pages * os.sysconf("SC_PAGE_SIZE") + budget
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def main() -> None:
    request = json.loads(sys.stdin.read())
    limits = Limits(**request["limits"])
    cap_memory(limits.sandbox_memory_bytes)
    try:
        info = check_model_file(Path(request["path"]), limits)
        answer = {"ok": True, "info": info.to_dict()}
    except ModelpressError as exc:
        answer = {"ok": False, "kind": exc.kind, "message": exc.message}
    except MemoryError:
        answer = {
            "ok": False,
            "kind": ModelTooLarge.kind,
            "message": "checking the model exceeded the memory limit; it is refused.",
        }
    except Exception as exc:  # any other parser failure is a refusal, not a crash
        answer = {
            "ok": False,
            "kind": ModelRejected.kind,
            "message": f"the model could not be read: {_first_line(exc)}",
        }
    sys.stdout.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
