"""Artifacts on disk under a per-tenant prefix, written atomically (a staging folder
under the root, then a rename).

Layout: ``ROOT/TENANT/models/ID/…``, ``ROOT/TENANT/datasets/ID/…``, ``ROOT/TENANT/jobs/ID/…``.
In the distributed mode ROOT is a shared mount (NFS, a volume) seen by API and workers.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import unicodedata
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

ARTIFACT_NAMES = ("model.onnx", "report.json", "curve.png", "curve.csv", "curve.json")
STAGING_MAX_AGE_S = 6 * 3600  # a staging folder this old is abandoned, whoever made it
log = logging.getLogger("modelpress.store")


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
        """A fresh folder under ``.tmp`` for one upload, removed afterwards; named after this
        host and process so that a restart can tell its dead predecessor's leftovers
        (``clean_staging``)."""
        path = Path(tempfile.mkdtemp(dir=self.tmp_dir(), prefix=f"{host_tag()}-{os.getpid()}-"))
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


def host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:40]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(name: str) -> tuple[str, int | None]:
    host, _, rest = name.partition("-")
    pid = rest.partition("-")[0]
    return host, int(pid) if pid.isdigit() else None


def clean_staging(root: Path) -> int:
    """Remove upload staging left by processes of this host that are gone (a server killed
    mid-upload), and any staging older than ``STAGING_MAX_AGE_S``. Another live server's
    uploads on a shared mount are left alone. Returns how many folders went."""
    staging = root / ".tmp"
    if not staging.is_dir():
        return 0
    removed = 0
    for entry in staging.iterdir():
        host, pid = _owner(entry.name)
        try:
            old = time.time() - entry.lstat().st_mtime > STAGING_MAX_AGE_S
        except FileNotFoundError:
            continue
        # unnamed entries predate this naming: nobody can claim them
        if pid is None or old or (host == host_tag() and pid != os.getpid() and not _alive(pid)):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            removed += 1
    if removed:
        log.info("removed %d abandoned staging entries from %s", removed, staging)
    return removed


def clean_name(name: str | None, default: str, limit: int = 120) -> str:
    """A user's file name, kept but made safe to store and show: the last path component,
    NFC, no NUL or other control characters (PostgreSQL refuses NUL in text), no
    leading dots, at most ``limit`` characters with the extension kept."""
    text = unicodedata.normalize("NFC", name or "")
    text = re.split(r"[/\\]", text)[-1]
    text = "".join(c for c in text if unicodedata.category(c)[0] != "C")
    text = re.sub(r"[^\w.()+ -]", "_", text).strip().lstrip(".")
    if not text:
        return default
    stem, dot, ext = text.rpartition(".")
    if dot and len(ext) <= 10 and len(text) > limit:
        return stem[: limit - len(ext) - 1] + "." + ext
    return text[:limit]
