"""Loading untrusted models: a single ``.onnx`` or a ``.zip`` of one ``.onnx`` plus its
external-data files (what ``torch.onnx.export(..., dynamo=True)`` writes by default).

Order of defences: size cap on the upload; for archives, member names, links, count,
declared sizes and compression ratios are checked before a byte is extracted; then the
graph is parsed in a child process under memory and time limits (``compressors.intake.sandbox``)
where declared tensor sizes, external-data locations, onnx.checker and one onnxruntime
session are tried. Only a model that passed all of that is parsed in this process.
Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import stat
import struct
import subprocess
import sys
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import onnx

from compressors.errors import ModelRejected, ModelTooLarge, UnsafeArchive
from compressors.onnx.inspection import ModelInfo

GiB = 1 << 30
MiB = 1 << 20
# signature, versions, flags, method, time, date, crc, sizes, name length, extra length
_LOCAL_HEADER = struct.Struct("<4s5HLLLHH")


@dataclass(frozen=True)
class Limits:
    """Caps applied to every untrusted model. Each can be raised by the operator."""

    max_file_bytes: int = 2 * GiB  # the upload itself, .onnx or .zip
    max_unpacked_bytes: int = 4 * GiB  # sum of declared sizes of archive members
    max_archive_members: int = 256
    max_compression_ratio: float = 200.0  # per member; real weights compress ~1.1x
    max_tensor_elements: int = 1 << 30  # one declared tensor (4 GiB of float32)
    max_total_elements: int = 2 << 30  # all declared tensors together
    sandbox_memory_bytes: int = 8 * GiB  # address space the parse may add to the child's start-up
    sandbox_seconds: float = 300.0


@dataclass
class LoadedModel:
    """A validated model: its graph with external data in memory, and what we know of it."""

    proto: onnx.ModelProto
    path: Path  # the .onnx file (inside the unpacked bundle for a zip)
    sha256: str  # of the file the user gave us
    file_bytes: int  # .onnx plus its external data, as stored
    info: ModelInfo


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            digest.update(block)
    return digest.hexdigest()


def is_zip(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"PK\x03\x04"


def unpack_bundle(path: Path, dest: Path, limits: Limits = Limits()) -> Path:
    """Return the ``.onnx`` to load: ``path`` itself, or the one inside a safely unpacked zip."""
    if not path.is_file():
        raise ModelRejected(f"{path} is not a file; give the path of an .onnx or .zip model.")
    size = path.stat().st_size
    if size > limits.max_file_bytes:
        raise ModelTooLarge(
            f"the model file is {size:,} bytes, over the {limits.max_file_bytes:,}-byte limit."
        )
    if size == 0:
        raise ModelRejected("the model file is empty; give an .onnx file or a .zip bundle.")
    if not is_zip(path):
        return path
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UnsafeArchive(f"the .zip bundle cannot be read ({exc}); re-create it.") from exc
    with archive:
        members = _checked_members(archive, limits)
        models = [m for m in members if m.filename.lower().endswith(".onnx")]
        if len(models) != 1:
            raise UnsafeArchive(
                f"the .zip bundle holds {len(models)} .onnx files; it must hold exactly one, "
                "plus its external-data files."
            )
        dest.mkdir(parents=True, exist_ok=True)
        budget = limits.max_unpacked_bytes
        for member in members:
            budget -= _extract(archive, member, dest, budget)
    return dest / models[0].filename


def _checked_members(archive: zipfile.ZipFile, limits: Limits) -> list[zipfile.ZipInfo]:
    infos = archive.infolist()
    if len(infos) > limits.max_archive_members:
        raise UnsafeArchive(
            f"the .zip bundle has {len(infos)} entries, over the limit of "
            f"{limits.max_archive_members}; bundle only the model and its data files."
        )
    check_zip_layout(archive, infos)
    total = 0
    members = []
    for info in infos:
        name = info.filename
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise UnsafeArchive(f"the .zip bundle holds a symbolic link ({name!r}); links are refused.")
        pure = PurePosixPath(name.replace("\\", "/"))
        if pure.is_absolute() or ".." in pure.parts or (pure.parts and ":" in pure.parts[0]):
            raise UnsafeArchive(f"the .zip entry {name!r} points outside the bundle; it is refused.")
        if info.flag_bits & 0x1:
            raise UnsafeArchive(f"the .zip entry {name!r} is encrypted; bundle it unencrypted.")
        if info.is_dir() or name.startswith("__MACOSX/") or pure.name.startswith("._"):
            continue
        total += info.file_size
        if total > limits.max_unpacked_bytes:
            raise UnsafeArchive(
                f"the .zip bundle unpacks to more than {limits.max_unpacked_bytes:,} bytes; "
                "it looks like a zip bomb and is refused."
            )
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > MiB and ratio > limits.max_compression_ratio:
            raise UnsafeArchive(
                f"the .zip entry {name!r} expands {ratio:.0f}-fold, over the "
                f"{limits.max_compression_ratio:.0f}x limit; it looks like a zip bomb."
            )
        members.append(info)
    return members


def check_zip_layout(archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo]) -> None:
    """Refuse entries that share or overlap their bytes, or that the central directory lists
    out of file order: one compressed kernel referenced by many entries is how a small
    archive declares gigabytes while every entry stays under the per-member ratio cap."""
    fp = archive.fp
    assert fp is not None
    end = 0
    for info in infos:
        if info.header_offset < end:
            raise UnsafeArchive(
                f"the .zip entry {info.filename!r} overlaps the entry before it or is out of order; "
                "overlapping entries are how zip bombs are built, so the bundle is refused. "
                "Re-create it with an ordinary zip tool."
            )
        fp.seek(info.header_offset)
        header = fp.read(_LOCAL_HEADER.size)
        if len(header) != _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
            raise UnsafeArchive(
                f"the .zip entry {info.filename!r} has no local header; re-create the bundle."
            )
        name_length, extra_length = _LOCAL_HEADER.unpack(header)[-2:]
        end = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length + info.compress_size
    if end > archive.start_dir:
        raise UnsafeArchive("the .zip entries run into the central directory; the bundle is refused.")


def _extract(archive: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, budget: int) -> int:
    """Write one member; return the bytes written. Stops at the member's declared size and at
    what is left of the bundle's cap, whatever the headers claim."""
    target = dest.joinpath(*PurePosixPath(info.filename.replace("\\", "/")).parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    written = 0
    with archive.open(info) as src, os.fdopen(os.open(target, flags, 0o600), "wb") as out:
        for block in iter(lambda: src.read(MiB), b""):
            written += len(block)
            if written > info.file_size:
                raise UnsafeArchive(f"the .zip entry {info.filename!r} is larger than it declares.")
            if written > budget:
                raise UnsafeArchive("the .zip bundle unpacks to more than its cap; it is refused.")
            out.write(block)
    return written


def validate_in_sandbox(onnx_path: Path, limits: Limits = Limits()) -> ModelInfo:
    """Parse and check the model in a child process; return what inspection found.

    The child gets an address-space cap and a wall-clock limit, so a decoder bug or a
    crafted graph costs at most a dead child, reported as a refusal."""
    request = json.dumps({"path": str(onnx_path), "limits": asdict(limits)})

    def _cap() -> None:  # runs in the child before exec; the child caps its memory itself
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "compressors.intake.sandbox"],
            input=request.encode(),
            capture_output=True,
            timeout=limits.sandbox_seconds,
            preexec_fn=_cap,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ModelRejected(
            f"checking the model took longer than {limits.sandbox_seconds:.0f} s; "
            "it is refused as too costly to parse."
        ) from exc
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        raise ModelRejected(
            f"the model crashed the ONNX parser ({name}); it is malformed or hostile and is refused."
        )
    try:
        answer = json.loads(done.stdout.decode().strip().splitlines()[-1])
    except (IndexError, ValueError) as exc:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        if "MemoryError" in tail[0] or "bad_alloc" in tail[0]:
            raise ModelRejected(
                "parsing the model exceeded the memory limit; it is refused as too large."
            ) from exc
        raise ModelRejected(f"the model could not be checked ({tail[0]}).") from exc
    if not answer["ok"]:
        from compressors import errors

        error_type = next(
            (
                c
                for c in vars(errors).values()
                if isinstance(c, type) and issubclass(c, errors.ModelpressError) and c.kind == answer["kind"]
            ),
            ModelRejected,
        )
        raise error_type(answer["message"])
    return ModelInfo.from_dict(answer["info"])


def load_model(path: Path, workdir: Path, limits: Limits = Limits()) -> LoadedModel:
    """Validate ``path`` (.onnx or .zip) in a sandbox, then load it with its external data."""
    path = Path(path)
    onnx_path = unpack_bundle(path, workdir / "bundle", limits)
    info = validate_in_sandbox(onnx_path, limits)
    proto = onnx.load(str(onnx_path), load_external_data=True)
    file_bytes = onnx_path.stat().st_size + sum(
        (onnx_path.parent / loc).stat().st_size for loc in info.external_files
    )
    return LoadedModel(proto, onnx_path, sha256_file(path), file_bytes, info)
