"""Hostile and broken model files are refused with exit code 2 and one line, no traceback."""

from __future__ import annotations

import io
import os
import pickle
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compressors.errors import ModelRejected, ModelTooLarge, UnsafeArchive, UnsafeExternalData
from compressors.intake.loading import Limits, load_model
from tests import bombs, builders
from tests.conftest import run_cli


def _refused(path: Path, kind: str) -> str:
    done = run_cli("compress", str(path), "--method", "svd", "-o", str(path.parent / "out.onnx"))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert f": {kind}:" in lines[0]
    assert not (path.parent / "out.onnx").exists()
    return lines[0]


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "random.onnx"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    _refused(path, "model-rejected")


def test_truncated_file(tmp_path: Path) -> None:
    whole = builders.gemm(64, 32).SerializeToString()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(whole[: len(whole) // 2])
    _refused(path, "model-rejected")


def test_pickle_renamed_onnx_is_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"

    class Boom:
        def __reduce__(self):  # would create the marker file if anything unpickled it
            return (os.mkdir, (str(marker),))

    path = tmp_path / "model.onnx"
    path.write_bytes(pickle.dumps({"state_dict": Boom()}))
    line = _refused(path, "model-rejected")
    assert "pickle" in line
    assert not marker.exists()


def _external_model(location: str) -> onnx.ModelProto:
    model = builders.gemm(4, 4, bias=False)
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    del weight.float_data[:]
    weight.data_location = TensorProto.EXTERNAL
    for key, val in (("location", location), ("offset", "0"), ("length", "64")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, val
    return model


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../secret.bin"])
def test_external_data_path_traversal(tmp_path: Path, location: str) -> None:
    (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
    folder = tmp_path / "model"
    folder.mkdir()
    path = builders.save(_external_model(location), folder / "model.onnx")
    line = _refused(path, "unsafe-external-data")
    assert "outside" in line


def test_external_data_through_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.bin").symlink_to(tmp_path / "secret.bin")
    path = builders.save(_external_model("weights.bin"), folder / "model.onnx")
    _refused(path, "unsafe-external-data")


def test_zip_slip(tmp_path: Path) -> None:
    path = tmp_path / "slip.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model.onnx", builders.gemm(8, 8).SerializeToString())
        archive.writestr("../../escaped.txt", b"pwned")
    line = _refused(path, "unsafe-archive")
    assert "outside" in line
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_zip_with_a_symlink(tmp_path: Path) -> None:
    path = tmp_path / "link.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model.onnx", builders.gemm(8, 8).SerializeToString())
        link = zipfile.ZipInfo("model.onnx.data")
        link.external_attr = 0o120777 << 16
        archive.writestr(link, "/etc/passwd")
    _refused(path, "unsafe-archive")


def test_zip_bomb(tmp_path: Path) -> None:
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model.onnx", builders.gemm(8, 8).SerializeToString())
        archive.writestr("model.onnx.data", b"\0" * (64 << 20))
    assert path.stat().st_size < 1 << 20
    line = _refused(path, "unsafe-archive")
    assert "zip bomb" in line


def test_zip_bomb_by_total_size_is_refused_before_extraction(tmp_path: Path) -> None:
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model.onnx", builders.gemm(8, 8).SerializeToString())
        archive.writestr("a.bin", np.random.default_rng(0).bytes(3 << 20))
    with pytest.raises(UnsafeArchive):
        load_model(path, tmp_path / "work", Limits(max_unpacked_bytes=2 << 20))
    assert not (tmp_path / "work" / "bundle" / "a.bin").exists()


def _written(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.exists() else 0


def test_a_zip_whose_entries_overlap_is_refused_before_a_byte_is_written(tmp_path: Path) -> None:
    # ~205 KB declaring 4.0 GB over 100 entries, each under the 200x ratio cap: the shared
    # kernel was unpacked once per entry (3.9 GiB written) before the layout was checked
    path = bombs.overlapping_zip(tmp_path / "overlap.zip", builders.gemm(8, 8).SerializeToString())
    assert path.stat().st_size < 220_000
    with pytest.raises(UnsafeArchive, match="overlaps"):
        load_model(path, tmp_path / "work")
    assert _written(tmp_path / "work") < 1 << 20
    line = _refused(path, "unsafe-archive")
    assert "overlap" in line


def test_a_zip_listing_its_entries_out_of_order_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "shuffled.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model.onnx", builders.gemm(8, 8).SerializeToString())
        archive.writestr("notes.txt", b"x" * 100)
        archive.filelist.reverse()  # the central directory is written from this list
    with pytest.raises(UnsafeArchive, match="out of order"):
        load_model(path, tmp_path / "work")


def test_zip_with_two_models(tmp_path: Path) -> None:
    path = tmp_path / "two.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.onnx", builders.gemm(8, 8).SerializeToString())
        archive.writestr("b.onnx", builders.gemm(8, 8).SerializeToString())
    _refused(path, "unsafe-archive")


def test_graph_declaring_a_ten_billion_element_constant(tmp_path: Path) -> None:
    huge = TensorProto(name="huge", data_type=TensorProto.FLOAT, dims=[100_000, 100_000])
    node = helper.make_node("Constant", [], ["C"], value=huge)
    add = helper.make_node("Add", ["X", "C"], ["Y"])
    graph = helper.make_graph([node, add], "g", [builders.value("X", [1])], [builders.value("Y", [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "huge.onnx"
    path.write_bytes(model.SerializeToString())
    line = _refused(path, "model-too-large")
    assert "10,000,000,000" in line


def test_constant_of_shape_with_a_huge_shape(tmp_path: Path) -> None:
    shape = numpy_helper.from_array(np.array([100_000, 100_000], np.int64), "shape")
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["Z"]),
        helper.make_node("Add", ["X", "Z"], ["Y"]),
    ]
    graph = helper.make_graph(nodes, "g", [builders.value("X", [1])], [builders.value("Y", None)], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "cos.onnx"
    path.write_bytes(model.SerializeToString())
    _refused(path, "model-too-large")


def test_tensor_whose_bytes_do_not_match_its_shape(tmp_path: Path) -> None:
    model = builders.gemm(8, 8)
    model.graph.initializer[0].raw_data = b"\0" * 12
    path = tmp_path / "short.onnx"
    path.write_bytes(model.SerializeToString())
    _refused(path, "model-rejected")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    _refused(path, "model-rejected")


def test_oversized_file_is_refused_by_size_alone(tmp_path: Path) -> None:
    path = builders.save(builders.gemm(64, 64), tmp_path / "m.onnx")
    with pytest.raises(ModelTooLarge):
        load_model(path, tmp_path / "w", Limits(max_file_bytes=1024))


def test_a_crashing_or_memory_hungry_parse_is_contained(tmp_path: Path) -> None:
    # the child caps its memory once it has started, so the cap bounds the parse itself: a
    # model (16 MiB of weights) whose checks need more than 64 MiB is refused as too large,
    # and the same model loads when the budget leaves room
    path = builders.save(builders.gemm(2048, 2048), tmp_path / "m.onnx")
    with pytest.raises(ModelRejected) as refused:
        load_model(path, tmp_path / "w", Limits(sandbox_memory_bytes=64 << 20))
    assert refused.value.kind == "model-too-large" and "memory limit" in refused.value.message
    assert load_model(path, tmp_path / "w2", Limits(sandbox_memory_bytes=1 << 30)).info.params >= 2048 * 2048


def test_a_parse_over_the_time_limit_is_refused(tmp_path: Path) -> None:
    path = builders.save(builders.gemm(64, 64), tmp_path / "m.onnx")
    started = time.monotonic()
    with pytest.raises(ModelRejected, match="longer than"):
        load_model(path, tmp_path / "w", Limits(sandbox_seconds=0.2))
    assert time.monotonic() - started < 30  # the child was stopped, not waited for


def test_missing_external_data_file(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    path = builders.save(_external_model("weights.bin"), folder / "model.onnx")
    line = _refused(path, "unsafe-external-data")
    assert "missing" in line


def test_errors_raised_in_process_are_typed(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    path = builders.save(_external_model("../x.bin"), folder / "model.onnx")
    with pytest.raises(UnsafeExternalData):
        load_model(path, tmp_path / "w")
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"PK\x03\x04" + io.BytesIO(b"x" * 100).getvalue())
    with pytest.raises(UnsafeArchive):
        load_model(junk, tmp_path / "w2")
