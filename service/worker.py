"""Running a claimed job: the same for local worker processes and Celery tasks.

The job runner does the work; this module holds the lease (a heartbeat thread), writes
progress to the database, turns cancellation into ``should_stop``, publishes artifacts
under the tenant's prefix and records the outcome. Per-epoch checkpoints live in the
job's own folder, so a job re-claimed after its worker died resumes where it was.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from compressors import JobCancelled, ModelpressError, finite
from service import queue
from service.db import session_scope
from service.models import Job, StoredDataset, StoredModel, utcnow
from service.problems import is_disk_full, problem_body
from service.runner import Progress, run_job
from service.settings import Settings
from service.spec import parse_spec
from service.store import ArtifactStore

log = logging.getLogger("modelpress.worker")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident() % 100000}"


class Lease:
    """Heartbeats in a thread; says when the job must stop, and why: cancelled, lease lost,
    timed out (``MODELPRESS_JOB_TIMEOUT_SECONDS`` from the job's first start) or draining."""

    def __init__(self, settings: Settings, job: Job, owner: str) -> None:
        self.settings, self.job_id, self.owner = settings, job.id, owner
        started = job.started_at or utcnow()
        self.deadline = started + timedelta(seconds=settings.job_timeout_seconds)
        self.cancel = False
        self.lost = False
        self.timed_out = False
        self._stop = threading.Event()
        self._last_check = 0.0
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def __enter__(self) -> Lease:
        _running[self.job_id] = (self.settings, self.owner)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        _running.pop(self.job_id, None)
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
            self.timed_out = utcnow() > self.deadline
        return self.cancel or self.lost or self.timed_out or _drain.is_set()


# SIGTERM sets this: the worker takes no more work and its running job stops at its next step
_drain = threading.Event()
_running: dict[str, tuple[Settings, str]] = {}


def request_drain(grace: float) -> None:
    """Stop taking work; the running job stops at its next step and is handed back without
    counting the attempt. A job that cannot stop within ``grace`` seconds (inside a long
    operation) is handed back from here and the process exits."""
    if _drain.is_set():
        return
    _drain.set()
    timer = threading.Timer(grace, leave)
    timer.daemon = True
    timer.start()


def leave() -> None:
    """Exit now, handing back whatever job still runs: at the end of the grace period (a job
    inside one long operation, a slow interpreter teardown), or once a drained job is back."""
    for job_id, (settings, owner) in list(_running.items()):
        with contextlib.suppress(Exception):
            queue.release(settings, job_id, owner)
            log.warning("job %s did not stop within the grace period; handed back", job_id)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


def execute(settings: Settings, job: Job, owner: str) -> str:
    """Run a job this worker has claimed; returns its terminal status, or "released" (handed
    back for a restart) or "lost" (another worker owns it now)."""
    store = ArtifactStore(settings.artifacts_dir)
    folder = store.folder(job.tenant_id, "jobs", job.id)
    with Lease(settings, job, owner) as lease:
        status, error = _run(settings, store, job, owner, lease)
        if status == "stopped":
            status, error = _why_stopped(settings, lease)
        if status == "failed" and _drain.is_set() and not lease.timed_out:
            # the SIGTERM that drains this worker also reaches its children (the ONNX parser's
            # sandbox): a failure during shutdown is not the job's; it runs again after restart
            log.warning("job %s failed while the worker was stopping; handed back", job.id)
            status, error = "released", None
        if status == "lost" or (lease.lost and status != "succeeded"):
            return "lost"
        if status == "released":
            queue.release(settings, job.id, owner)
            return status
        final = {
            "stage": "done" if status == "succeeded" else status,
            "fraction": 1.0 if status == "succeeded" else None,
        }
        queue.finish(settings, job.id, owner, status, error, final if status != "failed" else None)
    shutil.rmtree(folder / "work", ignore_errors=True)
    if status in ("succeeded", "cancelled"):
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    return status


def _why_stopped(settings: Settings, lease: Lease) -> tuple[str, dict[str, Any] | None]:
    if lease.lost:
        return "lost", None
    if lease.cancel:
        return "cancelled", None
    if lease.timed_out:
        return "failed", queue.timed_out_error(settings)
    return "released", None  # draining for a restart


def _run(
    settings: Settings, store: ArtifactStore, job: Job, owner: str, lease: Lease
) -> tuple[str, dict[str, Any] | None]:
    """The work itself: (status, error), where "stopped" means should_stop ended it."""
    folder = store.folder(job.tenant_id, "jobs", job.id)
    progress = _progress_writer(settings, job.id, owner)
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
        if lease.lost:
            return "lost", None  # another worker owns the job now: publish nothing
        _publish(store, folder)
        return "succeeded", None
    except JobCancelled:
        return "stopped", None
    except ModelpressError as exc:
        return "failed", problem_body(exc.kind, exc.message, 422)
    except Exception as exc:
        return "failed", failure(job.id, exc)


def failure(job_id: str, exc: BaseException) -> dict[str, Any]:
    """What a tenant reads of an unexpected error: a safe sentence and a reference; the detail
    (exception text, paths, driver messages) goes to the log under that reference."""
    reference = uuid.uuid4().hex[:12]
    if is_disk_full(exc):
        log.error("job %s: out of storage (reference %s): %s", job_id, reference, exc)
        detail = "the server ran out of storage while running the job; try again later"
        return problem_body(
            "insufficient-storage", f"{detail} (reference {reference}).", 507, reference=reference
        )
    log.error("job %s failed (reference %s)", job_id, reference, exc_info=exc)
    detail = f"the job failed on an internal error; quote reference {reference} to the operator."
    return problem_body("job-failed", detail, 500, reference=reference)


def _progress_writer(settings: Settings, job_id: str, owner: str) -> Callable[[Progress], None]:
    last_write = 0.0

    def progress(p: Progress) -> None:
        nonlocal last_write
        if p.stage == "done":
            return  # artifacts are not published yet: finish() writes "done" with the status
        now = time.monotonic()
        if p.stage in ("train", "finetune") and now - last_write < 0.5:
            return  # keep the database quiet; stage changes always go through
        last_write = now
        queue.record_progress(settings, job_id, owner, _progress_dict(p))
        if settings.crash_on_stage and p.stage == settings.crash_on_stage:
            os._exit(137)  # testing knob: a worker that dies here every time

    return progress


def _progress_dict(p: Progress) -> dict[str, Any]:
    return {
        "stage": p.stage,
        "fraction": round(p.fraction, 4),
        "epoch": p.epoch,
        "eta_s": None if p.eta_s is None else round(p.eta_s, 1),
        # a diverging run's loss may be NaN: PostgreSQL's json refuses it, so it is stored as null
        "metrics": finite({k: float(v) for k, v in p.metrics.items()}),
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
    """The local executor's worker process: claim, run, repeat; on SIGTERM, stop taking work.
    A database or disk that keeps failing makes it back off (up to a minute), not crash-loop."""
    owner = worker_name()
    log.info("local worker %s started", owner)
    backoff = 0.0
    while not _drain.is_set() and (stop is None or not stop.is_set()):
        try:
            job = queue.claim(settings, owner)
            if job is not None:
                log.info("worker %s runs %s (attempt %s)", owner, job.id, job.attempts)
                execute(settings, job, owner)
            backoff = 0.0
        except Exception as exc:
            backoff = min(60.0, max(1.0, backoff * 2))
            kind = "out of storage" if is_disk_full(exc) else type(exc).__name__
            log.warning("worker %s: %s; backing off %.0f s", owner, kind, backoff, exc_info=True)
            job = None
        if job is None:
            (stop or _drain).wait(backoff or poll_seconds)
