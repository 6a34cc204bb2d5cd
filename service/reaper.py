"""The reaper: the one place that recovers jobs nobody owns, whatever the broker did.

Leases in the database are the single source of truth. Every ``MODELPRESS_REAPER_SECONDS``
the reaper (a thread in ``serve`` and in each ``modelpress worker``; a database lock lets
one of them act at a time) does four things:

- a cancelled job whose lease expired (its worker died) becomes ``cancelled``;
- a job past ``MODELPRESS_JOB_TIMEOUT_SECONDS`` plus one lease (a worker stuck where it
  cannot check its time) becomes ``failed``, "timed out";
- with a broker (Celery), a running job whose lease expired gets a new message, so any
  live worker takes it over (within the lease plus one reaper interval);
- with a broker, queued jobs whose message was sent more than one interval ago are sent
  again when the broker holds fewer messages than there are queued jobs (the message was
  lost: broker down at submit, a broker restarted without persistence, a worker that died
  holding it). A duplicate message is harmless: the claim lets one worker win.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select, text, update
from sqlalchemy.orm import Session

from service import queue
from service.db import session_scope
from service.executors import Executor, executor_for
from service.models import Job, utcnow
from service.settings import Settings

log = logging.getLogger("modelpress.reaper")
LOCK_KEY = 0x6D70_7265  # "mpre": the advisory lock that lets one reaper act at a time (PostgreSQL)


@dataclass
class Reaped:
    cancelled: list[str] = field(default_factory=list)
    timed_out: list[str] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)


def reap(settings: Settings, executor: Executor) -> Reaped:
    """One pass; returns what it did. Sends happen after the transaction that stamped them."""
    done = Reaped()
    with session_scope(settings.db_url) as session:
        if not _locked(session):
            return done  # another reaper is at it
        now = utcnow()
        done.cancelled = _cancel_unowned(session, now)
        done.timed_out = _time_out(session, now, settings)
        orphans = _orphans(session, now, settings, executor) if executor.dispatches else []
        if orphans:
            session.execute(update(Job).where(Job.id.in_(orphans)).values(dispatched_at=now))
    for job_id in orphans:
        try:
            executor.submit(job_id)
        except Exception as exc:  # the broker is still down: the next pass tries again
            log.warning("reaper could not send %s (%s); retrying next pass", job_id, type(exc).__name__)
            break
        done.sent.append(job_id)
    if done.cancelled or done.timed_out or done.sent:
        log.info("reaper: %s", done)
    return done


def _locked(session: Session) -> bool:
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        return bool(session.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": LOCK_KEY}))
    return True  # SQLite: the write transaction (BEGIN IMMEDIATE) is the lock


def _ids(session: Session, *where: object) -> list[str]:
    return list(session.scalars(select(Job.id).where(*where).order_by(Job.created_at)))  # type: ignore[arg-type]


def _cancel_unowned(session: Session, now: datetime) -> list[str]:
    ids = _ids(session, Job.status == "running", Job.cancel_requested.is_(True), Job.lease_expires < now)
    if ids:
        session.execute(
            update(Job)
            .where(Job.id.in_(ids))
            .values(status="cancelled", progress={"stage": "cancelled"}, finished_at=now, lease_owner=None)
        )
    return ids


def _time_out(session: Session, now: datetime, settings: Settings) -> list[str]:
    limit = now - timedelta(seconds=settings.job_timeout_seconds + settings.lease_seconds)
    ids = _ids(session, Job.status.in_(("queued", "running")), Job.started_at < limit)
    if ids:
        session.execute(
            update(Job)
            .where(Job.id.in_(ids))
            .values(status="failed", error=queue.timed_out_error(settings), finished_at=now, lease_owner=None)
        )
    return ids


def _orphans(session: Session, now: datetime, settings: Settings, executor: Executor) -> list[str]:
    stale = or_(
        Job.dispatched_at.is_(None), Job.dispatched_at < now - timedelta(seconds=settings.reaper_seconds)
    )
    expired = and_(Job.status == "running", Job.lease_expires < now, Job.cancel_requested.is_(False))
    ids = _ids(session, expired, stale)
    queued = session.scalar(select(func.count()).where(Job.status == "queued")) or 0
    depth = executor.depth()
    if queued and (depth is None or depth < queued):
        ids += _ids(session, Job.status == "queued", stale)
    return ids


class Reaper:
    """The periodic reaper as a daemon thread."""

    def __init__(self, settings: Settings, executor: Executor | None = None) -> None:
        self.settings = settings
        self.executor = executor or executor_for(settings)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reaper", daemon=True)

    def start(self) -> Reaper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.settings.reaper_seconds):
            try:
                reap(self.settings, self.executor)
            except Exception:  # the database is down: try again next pass
                log.warning("reaper pass failed", exc_info=True)
