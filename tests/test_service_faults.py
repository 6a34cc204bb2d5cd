"""Fault injection on the embedded default: dead workers, a dead server, a job that always
crashes, a burst of submissions, and SQLite under several workers."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.harness import Service, digits_dataset, upload_model, wait_for, wait_training

LONG = {
    "method": "nuclear",
    "rank": {"target_macs": 0.5},
    "training": {"epochs": 12},
    "evaluation": {"latency": False},
}


def _submit(client: httpx.Client, zip_path: Path, body: dict) -> str:
    model = upload_model(client, zip_path)
    dataset = digits_dataset(client)
    response = client.post("/v1/jobs", json={"model_id": model["id"], "dataset_id": dataset["id"], **body})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def test_kill_9_of_a_worker_mid_job_then_the_job_completes(tmp_path: Path, digits_cnn_zip: Path) -> None:
    service = Service(tmp_path / "data", workers=1).start()
    try:
        with service.client(service.create_key("acme")) as client:
            job_id = _submit(client, digits_cnn_zip, LONG)
            wait_training(client, job_id)
            (worker,) = service.worker_pids()
            os.kill(worker, signal.SIGKILL)
            done = wait_for(client, job_id)
            assert done["status"] == "succeeded", done
            assert done["attempts"] == 2
            report = client.get(f"/v1/jobs/{job_id}/report").json()
            # the second attempt resumed from the per-epoch checkpoint rather than starting over
            assert report["training"]["stages"]["train"]["resumed_from_epoch"] >= 1
    finally:
        service.stop()


def test_kill_9_of_the_whole_server_then_restart_completes_the_job(
    tmp_path: Path, digits_cnn_zip: Path
) -> None:
    service = Service(tmp_path / "data", workers=1).start()
    token = service.create_key("acme")
    try:
        with service.client(token) as client:
            job_id = _submit(client, digits_cnn_zip, LONG)
            wait_training(client, job_id)
        service.kill_tree()
        time.sleep(1)
        assert not service.worker_pids() if service.process and service.process.poll() is None else True
        service.start()  # same data folder, same database: the job must survive
        with service.client(token) as client:
            done = wait_for(client, job_id)
            assert done["status"] == "succeeded", done
            assert client.get(f"/v1/jobs/{job_id}/artifacts/model.onnx").status_code == 200
    finally:
        service.stop()


def test_a_job_that_kills_its_worker_every_time_fails_with_the_reason(
    tmp_path: Path, digits_cnn_zip: Path
) -> None:
    service = Service(
        tmp_path / "data",
        workers=1,
        MODELPRESS_CRASH_ON_STAGE="compress",
        MODELPRESS_LEASE_SECONDS="2",
        MODELPRESS_MAX_ATTEMPTS="2",
    ).start()
    try:
        with service.client(service.create_key("acme")) as client:
            job_id = _submit(client, digits_cnn_zip, {"method": "svd", "evaluation": {"latency": False}})
            done = wait_for(client, job_id, timeout=120)
            assert done["status"] == "failed"
            assert done["attempts"] == 2
            assert "died" in done["error"]["detail"] and "compress" in done["error"]["detail"]
            assert done["error"]["type"].endswith("/job-crashed")
    finally:
        service.stop()


def test_fifty_concurrent_submissions_make_fifty_jobs(tmp_path: Path, digits_cnn_zip: Path) -> None:
    service = Service(tmp_path / "data", workers=0).start()
    try:
        with service.client(service.create_key("acme")) as client:
            model = upload_model(client, digits_cnn_zip)

        def submit(i: int) -> str:
            with service.client(client.headers["authorization"].split()[1]) as own:
                response = own.post(
                    "/v1/jobs",
                    json={"model_id": model["id"], "method": "svd", "rank": {"energy": 0.5 + i / 200}},
                    headers={"Idempotency-Key": f"burst-{i}"},
                )
                assert response.status_code == 202, response.text
                return response.json()["id"]

        with ThreadPoolExecutor(50) as pool:
            ids = list(pool.map(submit, range(50)))
        assert len(set(ids)) == 50
        with service.client(client.headers["authorization"].split()[1]) as c:
            listed = c.get("/v1/jobs", params={"limit": 200}).json()["items"]
            assert sorted(j["id"] for j in listed) == sorted(ids)
            metrics = c.get("/metrics").text
            assert 'modelpress_jobs{state="queued"} 50.0' in metrics
    finally:
        service.stop()


@pytest.mark.parametrize("workers", [4])
def test_sqlite_under_four_workers_has_no_lock_errors(
    tmp_path: Path, digits_cnn_zip: Path, workers: int
) -> None:
    service = Service(tmp_path / "data", workers=workers).start()
    try:
        with service.client(service.create_key("acme")) as client:
            model = upload_model(client, digits_cnn_zip)
            dataset = digits_dataset(client)
            ids = [
                client.post(
                    "/v1/jobs",
                    json={
                        "model_id": model["id"],
                        "dataset_id": dataset["id"],
                        "method": "svd",
                        "rank": {"energy": 0.6 + i / 50},
                        "evaluation": {"latency": False},
                    },
                ).json()["id"]
                for i in range(12)
            ]
            statuses = [wait_for(client, i, timeout=300)["status"] for i in ids]
            assert statuses == ["succeeded"] * 12
        log = service.log.read_text()
        assert "database is locked" not in log
        assert "Traceback" not in log
    finally:
        service.stop()
