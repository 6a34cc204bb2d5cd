"""Running a claimed job: the same for local worker processes and Celery tasks.

The job runner does the work; this module holds the lease (a heartbeat thread), writes
progress to the database, turns cancellation into ``should_stop``, publishes artifacts
under the tenant's prefix and records the outcome. Per-epoch checkpoints live in the
job's own folder, so a job re-claimed after its worker died resumes where it was.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from compressors import JobCancelled, ModelpressError
from service import queue
from service.db import session_scope
from service.models import Job, StoredDataset, StoredModel
from service.problems import problem_body
from service.runner import Progress, run_job
from service.settings import Settings
from service.spec import parse_spec
from service.store import ArtifactStore

log = logging.getLogger("modelpress.worker")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident() % 100000}"


class Lease:
    """Heartbeats in a thread; exposes whether cancellation was asked for."""

    def __init__(self, settings: Settings, job_id: str, owner: str) -> None:
        self.settings, self.job_id, self.owner = settings, job_id, owner
        self.cancel = False
        self.lost = False
        self._stop = threading.Event()
        self._last_check = 0.0
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        interval = max(0.2, self.settings.lease_seconds / 4)
        while not self._stop.wait(interval):
            try:
                ours, cancel = queue.heartbeat(self.settings, self.job_id, self.owner)
                self.cancel = self.cancel or cancel
                self.lost = not ours
            except Exception:  # a missed beat is retried; the lease has slack
                log.warning("heartbeat failed for %s", self.job_id, exc_info=True)

    def should_stop(self) -> bool:
        """Checked before every training step; asks the database at most every 0.2 s."""
        now = time.monotonic()
        if not self.cancel and now - self._last_check > 0.2:
            self._last_check = now
            self.cancel = queue.cancel_requested(self.settings, self.job_id)
        return self.cancel or self.lost


def execute(settings: Settings, job: Job, owner: str) -> str:
    """Run a job this worker has claimed; returns its terminal status."""
    store = ArtifactStore(settings.artifacts_dir)
    folder = store.folder(job.tenant_id, "jobs", job.id)
    last_write = 0.0

    with Lease(settings, job.id, owner) as lease:

        def progress(p: Progress) -> None:
            nonlocal last_write
            if p.stage == "done":
                return  # artifacts are not published yet: finish() writes "done" with the status
            now = time.monotonic()
            if p.stage in ("train", "finetune") and now - last_write < 0.5:
                return  # keep the database quiet; stage changes always go through
            last_write = now
            queue.record_progress(settings, job.id, owner, _progress_dict(p))
            if settings.crash_on_stage and p.stage == settings.crash_on_stage:
                os._exit(137)  # testing knob: a worker that dies here every time

        try:
            model_path, data = _inputs(settings, store, job)
            work = folder / "work"
            shutil.rmtree(work, ignore_errors=True)  # a dead attempt's scratch; checkpoints are kept
            if job.kind == "sweep":
                from service.sweeps import run_sweep

                run_sweep(job.spec, model_path, data, work, folder / "out", progress, lease.should_stop)
            else:
                run_job(
                    parse_spec(job.spec),
                    model_path,
                    data,
                    work,
                    folder / "out",
                    progress,
                    should_stop=lease.should_stop,
                    checkpoint_dir=folder / "checkpoints",
                )
            _publish(store, folder)
            status, error = "succeeded", None
        except JobCancelled:
            status, error = "cancelled", None
        except ModelpressError as exc:
            status, error = "failed", problem_body(exc.kind, exc.message, 422)
        except Exception as exc:
            log.exception("job %s failed", job.id)
            status, error = "failed", problem_body("job-failed", f"{type(exc).__name__}: {exc}"[:500], 500)
    if lease.lost and status != "succeeded":
        return "lost"
    final = {
        "stage": "done" if status == "succeeded" else status,
        "fraction": 1.0 if status == "succeeded" else None,
    }
    queue.finish(settings, job.id, owner, status, error, final if status != "failed" else None)
    shutil.rmtree(folder / "work", ignore_errors=True)
    if status in ("succeeded", "cancelled"):
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    return status


def _progress_dict(p: Progress) -> dict[str, Any]:
    return {
        "stage": p.stage,
        "fraction": round(p.fraction, 4),
        "epoch": p.epoch,
        "eta_s": None if p.eta_s is None else round(p.eta_s, 1),
        "metrics": {k: float(v) for k, v in p.metrics.items()},
    }


def _inputs(settings: Settings, store: ArtifactStore, job: Job) -> tuple[Path, str | Path | None]:
    with session_scope(settings.db_url, readonly=True) as session:
        model = session.scalar(select(StoredModel).where(StoredModel.id == job.model_id))
        dataset = (
            session.scalar(select(StoredDataset).where(StoredDataset.id == job.dataset_id))
            if job.dataset_id
            else None
        )
    assert model is not None
    model_path = store.folder(job.tenant_id, "models", model.id) / model.filename
    data: str | Path | None = None
    if dataset is not None:
        data = dataset.builtin or store.folder(job.tenant_id, "datasets", dataset.id) / "data.npz"
    return model_path, data


def _publish(store: ArtifactStore, folder: Path) -> None:
    """Move outputs into the job folder atomically (each file by rename)."""
    out = folder / "out"
    for item in out.iterdir():
        os.replace(item, folder / item.name)
    out.rmdir()


def run_local_worker(
    settings: Settings, poll_seconds: float = 0.2, stop: threading.Event | None = None
) -> None:
    """The local executor's worker process: claim, run, repeat."""
    owner = worker_name()
    log.info("local worker %s started", owner)
    while stop is None or not stop.is_set():
        job = queue.claim(settings, owner)
        if job is None:
            time.sleep(poll_seconds)
            continue
        log.info("worker %s runs %s (attempt %s)", owner, job.id, job.attempts)
        execute(settings, job, owner)
