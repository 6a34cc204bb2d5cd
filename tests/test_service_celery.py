"""The distributed mode end to end: ``modelpress serve`` with no local workers and one Celery
``modelpress worker`` on Redis, state in PostgreSQL, driven over HTTP on loopback.

Needs Redis and PostgreSQL. Outside CI the tests skip when either is missing; under
``CI=true`` they fail, so a broken CI service cannot pass unnoticed. Point them elsewhere
with ``MODELPRESS_TEST_REDIS_URL`` and ``MODELPRESS_TEST_POSTGRES_URL``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import redis

from compressors.intake.datasets import load_dataset
from compressors.onnx.inspection import TensorSpec
from service import queue
from service.db import engine_for
from service.executors.celery import TASK, app_for
from service.settings import Settings
from tests.backends import fresh_postgres, unavailable
from tests.harness import ROOT, Service, digits_dataset, follow_events, upload_model, wait_for

# database 7: away from the 0 a developer's own Redis work usually sits in; flushed by the tests
REDIS_URL = os.environ.get("MODELPRESS_TEST_REDIS_URL", "redis://127.0.0.1:6379/7")


@pytest.fixture(scope="module")
def backends() -> Iterator[dict[str, str]]:
    """A flushed Redis database and a fresh PostgreSQL database (dropped afterwards), given
    as the ``MODELPRESS_`` settings of the distributed mode."""
    broker = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3, socket_timeout=10)
    try:
        broker.flushdb()
    except redis.RedisError as exc:
        unavailable(f"Redis at {REDIS_URL} is unreachable ({exc}); start redis-server")
    try:
        with fresh_postgres() as database_url:
            yield {
                "MODELPRESS_EXECUTOR": "celery",
                "MODELPRESS_BROKER_URL": REDIS_URL,
                "MODELPRESS_DATABASE_URL": database_url,
            }
    finally:
        broker.flushdb()
        broker.close()


@dataclass
class Distributed:
    client: httpx.Client
    settings: Settings
    worker_log: Path


def _start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``modelpress worker`` in its own process group, logging to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "service.cli", "worker"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop_worker(worker: subprocess.Popen[bytes]) -> None:
    """Warm shutdown of the Celery main process, then ``kill -9`` of whatever is left in its group."""
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(10)


def _wait_for_log(
    log: Path, text: str, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> str:
    """The first line of ``log`` that contains ``text``, once there is one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if text in line:
                return line
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"worker exited with {process.returncode}: {log.read_text()[-3000:]}")
        time.sleep(0.2)
    raise TimeoutError(f"{text!r} not in {log.name} after {timeout} s: {log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def distributed(backends: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Distributed]:
    """serve (API only, ``--workers 0``) and one Celery worker sharing its artifact folder."""
    # a long lease: nothing here waits for one to expire, and a heartbeat starved on a busy
    # machine must not hand a running job to the duplicate test's stand-in second worker
    service = Service(tmp_path_factory.mktemp("celery"), workers=0, MODELPRESS_LEASE_SECONDS="30", **backends)
    settings = Settings(
        executor="celery",
        broker_url=backends["MODELPRESS_BROKER_URL"],
        database_url=backends["MODELPRESS_DATABASE_URL"],
    )
    worker_log = service.data_dir / "worker.log"
    worker = None
    try:
        service.start()  # migrates the fresh database before the worker and create-key look at it
        worker = _start_worker(service.env, worker_log)
        token = service.create_key("celery-e2e")
        _wait_for_log(worker_log, " ready.", timeout=60, process=worker)
        with service.client(token) as client:
            yield Distributed(client, settings, worker_log)
    finally:
        if worker is not None:
            _stop_worker(worker)
        service.stop()
        engine_for(settings.db_url).dispose()  # the tests' own connections, before the drop


def _submit(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return response.json()


def _digits_images(session: ort.InferenceSession, trained: bool) -> tuple[np.ndarray, np.ndarray]:
    """The samples the report evaluated, shaped (N, 1, 8, 8) as the CNN takes them: the
    held-out split when the job trained or calibrated on the rest, else every sample."""
    spec = TensorSpec(session.get_inputs()[0].name, "float", ["batch", 1, 8, 8])
    data = load_dataset("digits", spec, seed=0)
    if trained:
        x, y = data.x_val, data.y_val
    else:
        (x,), y = data.all_inputs()
    assert y is not None
    return x, y


@pytest.mark.slow
def test_svd_and_nuclear_jobs_run_on_a_celery_worker(
    distributed: Distributed, digits_cnn_zip: Path, tmp_path: Path
) -> None:
    client = distributed.client
    model = upload_model(client, digits_cnn_zip)
    dataset = digits_dataset(client)
    inputs = {"model_id": model["id"], "dataset_id": dataset["id"], "rank": {"target_macs": 0.5}}
    svd = _submit(client, {**inputs, "method": "svd"})
    nuclear = _submit(client, {**inputs, "method": "nuclear", "training": {"epochs": 1}})
    assert svd["status"] == nuclear["status"] == "queued"

    events = follow_events(client, nuclear["id"], timeout=120)
    assert events[-1]["event"] == "end" and events[-1]["status"] == "succeeded", events[-1]
    running = [e for e in events[:-1] if e["event"] == "progress" and e["status"] == "running"]
    assert running, f"no progress while running, only {[e['status'] for e in events]}"
    assert all(e["progress"]["fraction"] < 1.0 for e in running)

    for job, method in ((svd, "svd"), (nuclear, "nuclear")):
        done = wait_for(client, job["id"], timeout=120)
        assert done["status"] == "succeeded", done["error"]
        assert done["attempts"] == 1
        assert {"model.onnx", "report.json"} <= set(done["artifacts"])

        response = client.get(f"/v1/jobs/{job['id']}/report")
        assert response.status_code == 200, response.text
        report = response.json()
        assert report["method"] == method
        assert report["ratios"]["macs"] == pytest.approx(0.5, abs=0.02)
        assert report["after"]["macs"] < report["before"]["macs"]

        response = client.get(f"/v1/jobs/{job['id']}/artifacts/model.onnx")
        assert response.status_code == 200, response.text
        path = tmp_path / f"{method}.onnx"
        path.write_bytes(response.content)
        # the artifact is self-contained: it loads from its own file, no external data beside it
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        x, y = _digits_images(session, trained=True)  # svd weighs its truncation by the rest
        assert report["dataset"]["evaluated_samples"] == len(x)
        (logits,) = session.run(None, {session.get_inputs()[0].name: x})
        assert logits.shape == (len(x), 10)
        accuracy = float((logits.argmax(axis=1) == y).mean())
        assert accuracy == pytest.approx(report["after"]["accuracy"]["top1"], abs=0.01)


@pytest.mark.slow
def test_a_duplicate_delivery_does_not_run_a_job_twice(
    distributed: Distributed, digits_cnn_zip: Path
) -> None:
    client = distributed.client
    model = upload_model(client, digits_cnn_zip)
    dataset = digits_dataset(client)
    job = _submit(
        client,
        {
            "model_id": model["id"],
            "dataset_id": dataset["id"],
            "method": "nuclear",
            "rank": {"target_macs": 0.5},
            "training": {"epochs": 1},
        },
    )
    deadline = time.monotonic() + 60
    while (status := client.get(f"/v1/jobs/{job['id']}").json()["status"]) == "queued":
        assert time.monotonic() < deadline, "the worker never picked the job up"
        time.sleep(0.05)
    assert status == "running", f"the job was {status} before a duplicate could be sent"

    # what a broker redelivery looks like: the same task for the same job id, sent again
    duplicate = app_for(distributed.settings).send_task(TASK, args=[job["id"]])
    # a second worker taking it now would find the job leased to the first
    assert queue.claim(distributed.settings, "a-second-worker", job["id"]) is None

    done = wait_for(client, job["id"], timeout=120)
    assert done["status"] == "succeeded", done["error"]
    # the one worker gets the duplicate once the job is done, and turns it away
    line = _wait_for_log(distributed.worker_log, f"[{duplicate.id}] succeeded", timeout=60)
    assert line.endswith("'skipped'"), line
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded" and done["attempts"] == 1
    assert client.get(f"/v1/jobs/{job['id']}/artifacts/model.onnx").status_code == 200
