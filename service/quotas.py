"""Per-tenant quotas, checked before anything is queued or stored.

- jobs: at most ``max_concurrent_jobs_per_tenant`` unfinished (queued or running) and at most
  ``max_queued_jobs_per_tenant`` waiting; past either, 429 ``quota-exceeded`` with
  ``Retry-After`` (it clears as jobs finish);
- one job or sweep: at most ``max_sweep_runs`` compressions and ``max_training_epochs_per_job``
  epochs over all of them (runs × (epochs + finetune_epochs)); past either, 422
  ``job-too-large`` (asking again will not help; ask for less);
- storage: uploaded models and datasets together at most ``max_storage_bytes_per_tenant``;
  past it, 403 ``storage-quota-exceeded`` (delete something first). Job artifacts are not
  counted: they are bounded by the jobs that make them.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from compressors import DEFAULT_TARGETS, METHODS
from service.models import Job, StoredDataset, StoredModel, Tenant
from service.problems import Problem
from service.settings import Settings

RETRY_SECONDS = 30


def check_jobs(session: Session, tenant: Tenant, settings: Settings) -> None:
    counts = dict(
        session.execute(
            select(Job.status, func.count())
            .where(Job.tenant_id == tenant.id, Job.status.in_(("queued", "running")))
            .group_by(Job.status)
        ).all()
    )
    unfinished, queued = sum(counts.values()), counts.get("queued", 0)
    for count, cap, what in (
        (unfinished, settings.max_concurrent_jobs_per_tenant, "unfinished jobs"),
        (queued, settings.max_queued_jobs_per_tenant, "queued jobs"),
    ):
        if count >= cap:
            raise Problem(
                "quota-exceeded",
                f"your account has {count} {what}, its limit; submit again when some have finished, "
                "or cancel one.",
                retry_after=RETRY_SECONDS,
            )


def check_size(kind: str, body: dict[str, Any], settings: Settings) -> None:
    runs, epochs = _cost(kind, body)
    if runs > settings.max_sweep_runs:
        raise Problem(
            "job-too-large",
            f"the sweep asks for {runs} compressions, over the limit of {settings.max_sweep_runs}; "
            "use fewer methods, targets, strengths or seeds.",
        )
    if epochs > settings.max_training_epochs_per_job:
        raise Problem(
            "job-too-large",
            f"the {kind} asks for {epochs:,} training epochs in all, over the limit of "
            f"{settings.max_training_epochs_per_job:,}; ask for fewer epochs or fewer points.",
        )


def _cost(kind: str, body: dict[str, Any]) -> tuple[int, int]:
    """(compressions, training epochs over all of them) a job or sweep asks for."""
    training = body.get("training") or {}
    per_run = int(training.get("epochs", 0) or 0) + int(training.get("finetune_epochs", 0) or 0)
    if kind != "sweep":
        retrains = METHODS[body["method"]].retrains if body.get("method") in METHODS else True
        return 1, per_run if retrains else int(training.get("finetune_epochs", 0) or 0)
    targets = len(body.get("targets") or DEFAULT_TARGETS)
    strengths = body.get("strengths") or {}
    seeds = len(body.get("seeds") or [0])
    runs = epochs = 0
    for method in body["methods"]:
        points = (len(strengths[method]) if method in strengths else targets) * seeds
        runs += points
        if method in METHODS and METHODS[method].retrains:
            epochs += points * per_run
    return runs, epochs


def check_storage(session: Session, tenant: Tenant, settings: Settings, incoming: int) -> None:
    used = 0
    for table in (StoredModel, StoredDataset):
        total = func.coalesce(func.sum(table.size_bytes), 0)
        used += session.scalar(select(total).where(table.tenant_id == tenant.id)) or 0
    cap = settings.max_storage_bytes_per_tenant
    if used + incoming > cap:
        raise Problem(
            "storage-quota-exceeded",
            f"your account stores {used:,} bytes of models and datasets; this upload of {incoming:,} "
            f"would pass its {cap:,}-byte quota. Delete models or datasets you no longer need.",
        )
