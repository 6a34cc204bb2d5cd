"""The distributed mode: Celery workers on Redis or RabbitMQ, state in PostgreSQL.

A task carries only the job id, and the broker is a doorbell, not the record: the message
is acknowledged when a worker receives it, and recovery never waits on a broker's
redelivery or visibility timeout. A worker that dies leaves its job's lease to expire; a
message the broker lost leaves a queued job nobody was told about; in both cases the reaper
(``service/reaper.py``) sends the job id again. Attempts are counted in the database when a
worker claims the job, so a duplicate message cannot run a job twice (the lease) or forever
(``max_attempts``).

The worker runs tasks in its main process (the ``solo`` pool, one job at a time), so a
SIGTERM reaches the running job: it stops at its next step, hands the job back without
counting the attempt, and the worker exits (``service.worker.request_drain``).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

from celery import Celery
from celery.signals import worker_shutting_down

from service.settings import Settings, get_settings

log = logging.getLogger("modelpress.celery")
TASK = "modelpress.run_job"
QUEUE = "modelpress"


@lru_cache
def celery_app(broker_url: str) -> Celery:
    app = Celery("modelpress", broker=broker_url)
    app.conf.update(
        task_acks_late=False,  # acked on receipt; the reaper, not the broker, recovers lost work
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        broker_heartbeat=0,  # a solo worker busy training sends no AMQP heartbeats
        # a submit while the broker is down must answer quickly: the job stays queued and
        # the reaper sends it when the broker is back
        task_publish_retry_policy={"max_retries": 1, "interval_start": 0.2, "interval_step": 0.5},
        task_default_queue=QUEUE,
    )
    app.task(name=TASK, bind=True)(run_job_task)
    return app


def app_for(settings: Settings) -> Celery:
    return celery_app(settings.broker_url or "")


def run_job_task(task: Any, job_id: str) -> str:
    from service import queue
    from service.worker import execute, worker_name

    settings = get_settings()
    owner = worker_name()
    try:
        job = queue.claim(settings, owner, job_id)
    except Exception:  # the database stayed down through the retries: the reaper sends it again
        log.exception("could not claim %s; the reaper will send it again", job_id)
        return "deferred"
    if job is None:
        log.info("job %s is not claimable (running elsewhere, finished or cancelled)", job_id)
        return "skipped"
    status = execute(settings, job, owner)
    if status == "released":  # stopped for a restart: another worker takes it now
        from service.worker import leave

        CeleryExecutor(settings).submit(job_id)
        leave()  # the message is acked and the job handed back: nothing holds the exit up
    return status


@worker_shutting_down.connect
def _drain(**_: object) -> None:
    from service.worker import request_drain

    request_drain(get_settings().shutdown_grace_seconds)


class CeleryExecutor:
    dispatches = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = app_for(settings)

    def submit(self, job_id: str) -> None:
        self.app.send_task(TASK, args=[job_id])

    def depth(self) -> int | None:
        try:
            with self.app.connection_for_write() as connection:
                declared = connection.default_channel.queue_declare(queue=QUEUE, passive=True)
                return int(declared.message_count)
        except Exception:  # the queue does not exist yet, or the broker is down
            return None

    def check(self) -> str:
        try:
            with self.app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, timeout=2)
            return "ok"
        except Exception as exc:
            return f"unreachable: {type(exc).__name__}"
