"""Deleting what a tenant stored: one model, dataset or finished job on request (``DELETE``),
or everything past ``retention_days`` when the operator sets it.

A record goes first (its transaction commits), then its folder: a crash in between leaves
files nobody can reach, never a record whose files are gone. A model or dataset that a job
still names is kept (409 ``in-use``): delete the job first, its report names them.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.db import session_scope
from service.models import TERMINAL, Job, StoredDataset, StoredModel, utcnow
from service.problems import Problem
from service.settings import Settings
from service.store import ArtifactStore

log = logging.getLogger("modelpress.retention")
SWEEP_SECONDS = 3600.0  # how often expired records are looked for


def delete_job(session: Session, store: ArtifactStore, job: Job) -> None:
    if job.status not in TERMINAL:
        raise Problem(
            "conflict", f"job '{job.id}' is {job.status}; cancel it, then delete it once it has stopped."
        )
    folder = store.folder(job.tenant_id, "jobs", job.id)
    session.delete(job)
    session.commit()
    shutil.rmtree(folder, ignore_errors=True)


def delete_upload(session: Session, store: ArtifactStore, item: StoredModel | StoredDataset) -> None:
    kind, column = ("models", Job.model_id) if isinstance(item, StoredModel) else ("datasets", Job.dataset_id)
    users = session.scalar(select(func.count()).select_from(Job).where(column == item.id)) or 0
    if users:
        raise Problem(
            "in-use",
            f"{users} job(s) use {kind[:-1]} '{item.id}'; delete those jobs first (DELETE /v1/jobs/{{id}}).",
        )
    folder = store.folder(item.tenant_id, kind, item.id)
    session.delete(item)
    session.commit()
    shutil.rmtree(folder, ignore_errors=True)


def purge_expired(settings: Settings, store: ArtifactStore) -> dict[str, int]:
    """Delete finished jobs that finished, then models and datasets made, more than
    ``retention_days`` ago (those still named by a job are kept). Returns what went."""
    assert settings.retention_days is not None
    cutoff = utcnow() - timedelta(days=settings.retention_days)
    removed = {"jobs": 0, "models": 0, "datasets": 0}
    with session_scope(settings.db_url) as session:
        old_jobs = select(Job).where(Job.status.in_(TERMINAL), Job.finished_at < cutoff)
        for job in session.scalars(old_jobs).all():
            delete_job(session, store, job)
            removed["jobs"] += 1
        models = session.scalars(select(StoredModel).where(StoredModel.created_at < cutoff)).all()
        datasets = session.scalars(select(StoredDataset).where(StoredDataset.created_at < cutoff)).all()
        items: list[tuple[str, StoredModel | StoredDataset]] = [("models", m) for m in models]
        items += [("datasets", d) for d in datasets]
        for key, item in items:
            try:
                delete_upload(session, store, item)
            except Problem:  # a job still uses it: kept until that job expires
                continue
            removed[key] += 1
    return removed


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """With ``retention_days`` set, the API process purges once at start and then hourly."""
    settings: Settings = app.state.settings
    task = asyncio.create_task(_purge_forever(settings, app.state.store)) if settings.retention_days else None
    try:
        yield
    finally:
        if task is not None:
            task.cancel()


async def _purge_forever(settings: Settings, store: ArtifactStore) -> None:
    while True:
        try:
            removed = await run_in_threadpool(purge_expired, settings, store)
            if any(removed.values()):
                log.info("retention removed %s", removed, extra=removed)
        except Exception:
            log.exception("retention pass failed; it is tried again in an hour")
        await asyncio.sleep(SWEEP_SECONDS)
