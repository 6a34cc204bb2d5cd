"""The durable job queue, kept in the database: claims with a lease, heartbeats, attempts.

A job is claimed by compare-and-set (``UPDATE … WHERE status = 'queued'`` or a running job
whose lease has expired), which works the same on SQLite and PostgreSQL and lets exactly
one worker win. Each claim counts an attempt; a job whose workers keep dying is failed
with the reason once ``max_attempts`` is spent, instead of looping or staying "running".
A worker that stops for a restart hands its job back (``release``) without counting the
attempt. The writes that decide a job's fate (claim, release, finish) are retried on
database errors with a bounded backoff: a transient error must not drop a job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import wraps
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from service.db import session_scope
from service.models import TERMINAL, Job, utcnow
from service.settings import Settings

log = logging.getLogger("modelpress.queue")
P = ParamSpec("P")
R = TypeVar("R")
# waits between tries of a claim, release or finish that met a database error (about 6 s in all)
RETRY_DELAYS = (0.1, 0.2, 0.4, 0.8, 1.6, 3.2)


def retried(fn: Callable[P, R]) -> Callable[P, R]:
    """Retry ``fn`` on database errors (connection lost, locked, disk full) with a bounded
    backoff; the last error is raised. Constraint violations are answers, not faults."""

    @wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        for delay in (*RETRY_DELAYS, None):
            try:
                return fn(*args, **kwargs)
            except IntegrityError:
                raise
            except DBAPIError as exc:
                if delay is None:
                    raise
                log.warning("%s: database error (%s); retrying in %.1f s", fn.__name__, exc.orig, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    return call


def _claimable(now: datetime) -> Any:
    return and_(
        Job.cancel_requested.is_(False),
        or_(Job.status == "queued", and_(Job.status == "running", Job.lease_expires < now)),
    )


@retried
def claim(settings: Settings, owner: str, job_id: str | None = None) -> Job | None:
    """Take the given job, or the oldest claimable one; None when there is nothing to do.

    A claimable job whose attempts are spent is failed here, with its last known stage."""
    while True:
        now = utcnow()
        with session_scope(settings.db_url) as session:
            query = select(Job.id, Job.attempts, Job.progress).where(_claimable(now))
            query = query.where(Job.id == job_id) if job_id else query.order_by(Job.created_at).limit(1)
            row = session.execute(query).first()
            if row is None:
                return None
            if row.attempts >= settings.max_attempts:
                stage = (row.progress or {}).get("stage", "unknown")
                session.execute(
                    update(Job)
                    .where(Job.id == row.id, _claimable(now))
                    .values(
                        status="failed",
                        finished_at=now,
                        lease_owner=None,
                        error=_problem(
                            "job-crashed",
                            (
                                f"the worker running this job died in each of its {row.attempts} attempts "
                                f"(last seen at stage '{stage}'); it will not be retried."
                            ),
                            500,
                        ),
                    )
                )
                if job_id:
                    return None
                continue
            won = session.execute(  # type: ignore[attr-defined]
                update(Job)
                .where(Job.id == row.id, _claimable(now))
                .values(
                    status="running",
                    lease_owner=owner,
                    lease_expires=now + timedelta(seconds=settings.lease_seconds),
                    attempts=Job.attempts + 1,
                    started_at=func.coalesce(Job.started_at, now),
                    error=None,
                )
            ).rowcount
            if won:
                return session.get(Job, row.id)
        if job_id:
            return None


def heartbeat(settings: Settings, job_id: str, owner: str) -> tuple[bool, bool]:
    """Renew the lease; returns (still ours, cancel requested)."""
    with session_scope(settings.db_url) as session:
        now = utcnow()
        renewed = session.execute(  # type: ignore[attr-defined]
            update(Job)
            .where(Job.id == job_id, Job.lease_owner == owner, Job.status == "running")
            .values(lease_expires=now + timedelta(seconds=settings.lease_seconds))
        ).rowcount
        cancel = session.scalar(select(Job.cancel_requested).where(Job.id == job_id))
    return bool(renewed), bool(cancel)


def cancel_requested(settings: Settings, job_id: str) -> bool:
    with session_scope(settings.db_url, readonly=True) as session:
        return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def record_progress(settings: Settings, job_id: str, owner: str, progress: dict[str, Any]) -> None:
    """Best effort: a progress write that fails is logged, never the job's failure."""
    try:
        with session_scope(settings.db_url) as session:
            session.execute(
                update(Job).where(Job.id == job_id, Job.lease_owner == owner).values(progress=progress)
            )
    except DBAPIError:
        log.warning("progress of %s not recorded", job_id, exc_info=True)


@retried
def release(settings: Settings, job_id: str, owner: str) -> bool:
    """Hand a running job back to the queue without counting the attempt (a worker stopping
    for a restart); its checkpoints stay, so the next claim resumes. Returns whether it did."""
    with session_scope(settings.db_url) as session:
        released = session.execute(  # type: ignore[attr-defined]
            update(Job)
            .where(Job.id == job_id, Job.lease_owner == owner, Job.status == "running")
            .values(
                status="queued",
                lease_owner=None,
                lease_expires=None,
                dispatched_at=None,
                attempts=case((Job.attempts > 0, Job.attempts - 1), else_=0),
                progress={"stage": "queued", "fraction": 0.0},
            )
        ).rowcount
    return bool(released)


@retried
def finish(
    settings: Settings,
    job_id: str,
    owner: str,
    status: str,
    error: dict[str, Any] | None = None,
    progress: dict[str, Any] | None = None,
) -> bool:
    """Mark a job terminal, if this worker still holds it. Returns whether it did."""
    assert status in TERMINAL
    with session_scope(settings.db_url) as session:
        job = session.get(Job, job_id)
        if job is None or job.lease_owner != owner or job.status != "running":
            return False
        now = utcnow()
        job.status, job.error, job.finished_at, job.lease_owner = status, error, now, None
        job.duration_s = (now - (job.started_at or now)).total_seconds()
        if progress is not None:
            job.progress = progress
    return True


def timed_out_error(settings: Settings) -> dict[str, Any]:
    limit = settings.job_timeout_seconds
    return _problem(
        "job-timed-out",
        f"the job ran past its time limit of {limit:g} s (MODELPRESS_JOB_TIMEOUT_SECONDS) and was "
        "stopped: timed out. Ask for fewer epochs or a smaller model, or raise the limit.",
        500,
    )


def _problem(kind: str, detail: str, status: int) -> dict[str, Any]:
    from service.problems import problem_body

    return problem_body(kind, detail, status)
