"""Faults of the embedded mode with real processes (docs/reliability.md): rolling restarts of
``serve`` during one long job, a job past its time limit, cancelling a job whose worker was
just killed, and staging left by a server killed mid-upload."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx

from service.store import host_tag
from tests.harness import Service, digits_dataset, upload_model, wait_for

LONG = {
    "method": "nuclear",
    "rank": {"target_macs": 0.5},
    "training": {"epochs": 12},
    "evaluation": {"latency": False},
}
FAST = {"MODELPRESS_LEASE_SECONDS": "2", "MODELPRESS_REAPER_SECONDS": "0.5"}


def _submit(client: httpx.Client, zip_path: Path, body: dict) -> str:
    model = upload_model(client, zip_path)
    dataset = digits_dataset(client)
    response = client.post("/v1/jobs", json={"model_id": model["id"], "dataset_id": dataset["id"], **body})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def _wait_epoch(client: httpx.Client, job_id: str, epoch: int, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        progress = job["progress"]
        if (
            job["status"] == "running"
            and progress.get("stage") == "train"
            and (progress.get("epoch") or 0) >= epoch
        ):
            return dict(job)
        assert job["status"] in ("queued", "running"), job
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} never trained epoch {epoch}")


def test_three_sigterm_restarts_during_one_job_cost_no_attempt(tmp_path: Path, digits_cnn_zip: Path) -> None:
    service = Service(tmp_path / "data", workers=1, MODELPRESS_SHUTDOWN_GRACE_SECONDS="5", **FAST).start()
    token = service.create_key("acme")
    stops = []
    try:
        with service.client(token) as client:
            job_id = _submit(client, digits_cnn_zip, LONG)
        for epoch in (2, 4, 6):
            with service.client(token) as client:
                _wait_epoch(client, job_id, epoch)
            assert service.process is not None
            started = time.monotonic()
            service.stop()  # SIGTERM to serve and its workers, as systemd or docker stop sends
            stops.append(time.monotonic() - started)
            assert service.process.returncode is not None
            service.start()
        with service.client(token) as client:
            done = wait_for(client, job_id, timeout=240)
            assert done["status"] == "succeeded", done
            # before: each restart burned an attempt, and the third failed the job for good
            assert done["attempts"] == 1
            report = client.get(f"/v1/jobs/{job_id}/report").json()
            assert report["training"]["stages"]["train"]["resumed_from_epoch"] >= 5
        print(f"SIGTERM restarts: serve stopped in {', '.join(f'{s:.1f}' for s in stops)} s")
        assert max(stops) < 5 + 5, stops  # the grace period bounds each stop
    finally:
        service.stop()


def test_a_job_past_its_time_limit_fails_timed_out(tmp_path: Path, digits_cnn_zip: Path) -> None:
    service = Service(tmp_path / "data", workers=1, MODELPRESS_JOB_TIMEOUT_SECONDS="6", **FAST).start()
    try:
        with service.client(service.create_key("acme")) as client:
            job_id = _submit(client, digits_cnn_zip, {**LONG, "training": {"epochs": 200}})
            done = wait_for(client, job_id, timeout=60)
            assert done["status"] == "failed", done
            print(f"timeout 6 s: the job ran {done['finished_at']} - {done['started_at']}")
            assert done["error"]["type"].endswith("/job-timed-out")
            assert "timed out" in done["error"]["detail"]
    finally:
        service.stop()


def test_cancelling_a_job_whose_worker_was_just_killed_ends_it(tmp_path: Path, digits_cnn_zip: Path) -> None:
    service = Service(tmp_path / "data", workers=1, **FAST).start()
    try:
        with service.client(service.create_key("acme")) as client:
            job_id = _submit(client, digits_cnn_zip, LONG)
            _wait_epoch(client, job_id, 1)
            (worker,) = service.worker_pids()
            os.kill(worker, signal.SIGKILL)
            killed = time.monotonic()
            response = client.post(f"/v1/jobs/{job_id}/cancel")
            assert response.status_code == 202, response.text
            # the lease is still live for up to 2 s: the reaper ends it when it runs out
            done = wait_for(client, job_id, timeout=30)
            assert done["status"] == "cancelled", done
            ended = time.monotonic() - killed
            print(f"cancel after kill -9: cancelled {ended:.1f} s after the kill (lease 2 s)")
            assert ended < 2 * 2 + 3  # the lease, one reaper pass, slack
    finally:
        service.stop()


def test_staging_left_by_a_killed_server_is_removed_at_start_up(tmp_path: Path) -> None:
    staging = tmp_path / "data" / "artifacts" / ".tmp"
    host = host_tag()
    dead = staging / "tmpk2x9_old"  # what a server killed mid-upload left before
    gone = staging / f"{host}-999999-abc"  # this host, a process that no longer exists
    live = staging / f"{host}-{os.getpid()}-def"  # a live process's upload (shared mount)
    for folder in (dead, gone, live):
        (folder / "bundle").mkdir(parents=True)
        (folder / "bundle" / "weights.bin").write_bytes(b"\0" * 4096)
    service = Service(tmp_path / "data", workers=0).start()
    try:
        assert sorted(p.name for p in staging.iterdir()) == [live.name]
    finally:
        service.stop()
