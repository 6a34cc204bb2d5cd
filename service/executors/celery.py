"""The distributed mode: Celery workers on Redis or RabbitMQ, state in PostgreSQL.

A task carries only the job id. Late acks with ``reject_on_worker_lost`` return a task to
the broker when its worker dies; the visibility timeout (Redis) sits above the longest job
so a slow job is not delivered twice. Attempts are counted in the database when a worker
claims the job, so a redelivered task cannot run a job twice at once (the lease) or loop
forever (``max_attempts``). A task that finds its job leased to another worker retries when
that lease ends, so a job whose worker died is taken over rather than dropped.
"""

from __future__ import annotations

import logging
from functools import lru_cache

from celery import Celery

from service.settings import Settings, get_settings

log = logging.getLogger("modelpress.celery")
TASK = "modelpress.run_job"


@lru_cache
def celery_app(broker_url: str, visibility_timeout: float) -> Celery:
    app = Celery("modelpress", broker=broker_url)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options={"visibility_timeout": int(visibility_timeout)},
        broker_connection_retry_on_startup=True,
        task_default_queue="modelpress",
    )
    app.task(name=TASK, bind=True, max_retries=None)(run_job_task)
    return app


def app_for(settings: Settings) -> Celery:
    return celery_app(settings.broker_url or "", settings.job_timeout_seconds + 3600)


def run_job_task(task, job_id: str) -> str:  # type: ignore[no-untyped-def]
    from service import queue
    from service.worker import execute, worker_name

    settings = get_settings()
    owner = worker_name()
    job = queue.claim(settings, owner, job_id)
    if job is None:
        left = queue.lease_left(settings, job_id)
        if left is not None:
            # leased to another worker; if that worker died, its task was redelivered at once,
            # before the lease ran out: come back then, and take the job over if it is still
            # abandoned (acking now would leave it "running" for ever)
            log.info("job %s is running under another lease; retrying in %.0f s", job_id, left + 1)
            raise task.retry(countdown=left + 1)
        log.info("job %s is not claimable (finished or cancelled)", job_id)
        return "skipped"
    status = execute(settings, job, owner)
    if status == "lost":
        raise task.retry(countdown=1)
    return status


class CeleryExecutor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = app_for(settings)

    def submit(self, job_id: str) -> None:
        self.app.send_task(TASK, args=[job_id])

    def check(self) -> str:
        try:
            with self.app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, timeout=2)
            return "ok"
        except Exception as exc:
            return f"unreachable: {type(exc).__name__}"
