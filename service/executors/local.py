"""The embedded default: worker processes beside the API, claiming jobs from the database.

``serve`` supervises them: a worker that dies (a crash, ``kill -9``, the OOM killer) is
replaced, and its job is re-claimed by whichever worker sees its lease expire. On SIGTERM
a worker stops at the next training step and hands its job back without counting the
attempt, so a restart of ``serve`` costs a job nothing but the time since its checkpoint.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time

from service.settings import Settings

log = logging.getLogger("modelpress.local")


class LocalExecutor:
    dispatches = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def submit(self, job_id: str) -> None:
        return None  # workers poll the jobs table; nothing to send

    def depth(self) -> int | None:
        return None

    def check(self) -> str:
        return "ok"


def _worker_main(settings_json: str) -> None:
    import contextlib
    import ctypes
    import signal

    with contextlib.suppress(OSError):  # die with serve, even when it is SIGKILLed (Linux)
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    from service.logs import configure_logging
    from service.settings import Settings

    settings = Settings.model_validate_json(settings_json)
    cap_threads(settings.local_worker_threads())
    from service.worker import request_drain, run_local_worker

    def drain(*_: object) -> None:  # finish the step, hand the job back, exit (bounded)
        request_drain(settings.shutdown_grace_seconds)

    signal.signal(signal.SIGTERM, drain)
    signal.signal(signal.SIGINT, drain)  # Ctrl-C in serve's terminal reaches the whole group
    configure_logging()
    run_local_worker(settings)


def cap_threads(threads: int) -> None:
    """Training in a worker beside the API would otherwise take every core (torch's default)
    and slow the API's answers; set before torch is imported, and on torch if it already is."""
    import os
    import sys

    os.environ["OMP_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


class WorkerPool:
    """N worker processes, restarted when they die, stopped with the server."""

    def __init__(self, settings: Settings, count: int) -> None:
        self.settings, self.count = settings, count
        self.context = multiprocessing.get_context("spawn")
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, daemon=True)

    def start(self) -> None:
        self.processes = [self._spawn() for _ in range(self.count)]
        self._thread.start()

    def _spawn(self) -> multiprocessing.process.BaseProcess:
        process = self.context.Process(
            target=_worker_main, args=(self.settings.model_dump_json(),), daemon=True
        )
        process.start()
        return process

    def _supervise(self) -> None:
        """Restart a worker that died. One that exited 0 was drained by a signal (serve's
        SIGTERM reaches its whole process group before the pool is stopped): a replacement
        would claim the job just handed back and be killed with the server, costing an attempt."""
        while not self._stop.wait(1.0):
            for i, process in enumerate(self.processes):
                if process.is_alive() or process.exitcode == 0:
                    continue
                log.warning("worker pid %s exited with %s; starting another", process.pid, process.exitcode)
                self.processes[i] = self._spawn()

    def stop(self) -> None:
        """SIGTERM each worker (it hands its job back), then SIGKILL what outlives the grace."""
        self._stop.set()
        for process in self.processes:
            process.terminate()
        deadline = time.monotonic() + self.settings.shutdown_grace_seconds + 5
        for process in self.processes:
            process.join(max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
