"""Artifacts on disk under a per-tenant prefix, written atomically (a staging folder
under the root, then a rename).

Layout: ``ROOT/TENANT/models/ID/…``, ``ROOT/TENANT/datasets/ID/…``, ``ROOT/TENANT/jobs/ID/…``.
In the distributed mode ROOT is a shared mount (NFS, a volume) seen by API and workers.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

ARTIFACT_NAMES = ("model.onnx", "report.json", "curve.png", "curve.csv", "curve.json")


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, tenant: str, kind: str, object_id: str) -> Path:
        return self.root / tenant / kind / object_id

    def tmp_dir(self) -> Path:
        path = self.root / ".tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh folder under the store's root for one upload, removed afterwards."""
        path = Path(tempfile.mkdtemp(dir=self.tmp_dir()))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def publish(self, source: Path, target: Path) -> Path:
        """Move ``source`` to ``target`` atomically: a rename when both are on one filesystem
        (staging lives under the root for that), a copy to a temp then a rename otherwise."""
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(source, target)
            return target
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        os.close(fd)
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
        return target

    def write_bytes(self, target: Path, data: bytes) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
        return target


async def stream_to_file(chunks: AsyncIterator[bytes], target: Path, limit: int) -> tuple[int, str]:
    """Write an upload to ``target`` chunk by chunk, hashing it on the way; stop and delete it
    past ``limit`` bytes. Returns the size and the SHA-256."""
    from service.problems import Problem

    written = 0
    digest = hashlib.sha256()
    try:
        with target.open("wb") as out:
            async for chunk in chunks:
                written += len(chunk)
                if written > limit:
                    raise Problem("payload-too-large", f"the upload exceeds the {limit:,}-byte limit.")
                digest.update(chunk)
                out.write(chunk)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return written, digest.hexdigest()
