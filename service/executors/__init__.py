"""How a job reaches the runner: ``local`` worker processes or ``celery`` workers.

Both call ``service.worker.execute`` on a job claimed from the database; they differ only
in how a worker learns there is work (polling the table vs. a broker message).
"""

from __future__ import annotations

from typing import Protocol

from service.settings import Settings


class Executor(Protocol):
    # whether jobs reach workers as broker messages the reaper may have to send again
    dispatches: bool

    def submit(self, job_id: str) -> None: ...

    def depth(self) -> int | None:
        """Messages waiting in the broker's queue; None when unknown."""
        ...

    def check(self) -> str:
        """ "ok", or why the executor cannot take work now (for /readyz)."""
        ...


def executor_for(settings: Settings) -> Executor:
    if settings.executor == "celery":
        from service.executors.celery import CeleryExecutor

        return CeleryExecutor(settings)
    from service.executors.local import LocalExecutor

    return LocalExecutor(settings)
