"""The embedded default over real HTTP: ``modelpress serve`` with local workers and SQLite."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx

from compressors.onnx import metrics
from tests.harness import Service, digits_dataset, follow_events, upload_model, wait_for


def test_end_to_end_svd_and_nuclear(service: Service, token: str, digits_cnn_zip: Path) -> None:
    with service.client(token) as client:
        model = upload_model(client, digits_cnn_zip)
        assert model["retrainable"] and model["eligible_layers"] and model["opset"] >= 18
        dataset = digits_dataset(client)
        jobs = {}
        # enough epochs that training spans several of the stream's 0.25 s polls
        for method, extra in (("svd", {}), ("nuclear", {"training": {"epochs": 12}})):
            body = {
                "model_id": model["id"],
                "dataset_id": dataset["id"],
                "method": method,
                "rank": {"target_macs": 0.5},
                **extra,
            }
            response = client.post("/v1/jobs", json=body)
            assert response.status_code == 202, response.text
            assert response.json()["status"] == "queued"
            jobs[method] = response.json()["id"]
        events = follow_events(client, jobs["nuclear"])
        stages = [e["progress"]["stage"] for e in events]
        assert events[-1]["event"] == "end" and events[-1]["status"] == "succeeded"
        assert "train" in stages, stages  # progress while training, not only the end
        assert any(
            e["progress"].get("eta_s") is not None for e in events if e["progress"]["stage"] == "train"
        )
        for method, job_id in jobs.items():
            job = wait_for(client, job_id)
            assert job["status"] == "succeeded", job
            assert {"model.onnx", "report.json"} <= set(job["artifacts"])
            report = client.get(f"/v1/jobs/{job_id}/report").json()
            assert report["method"] == method
            assert abs(report["ratios"]["macs"] - 0.5) <= 0.02
            blob = client.get(f"/v1/jobs/{job_id}/artifacts/model.onnx")
            assert blob.status_code == 200
            artifact = onnx.load_from_string(blob.content)
            x = np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32)
            assert metrics.predict(artifact, x).shape == (16, 10)
        listing = client.get("/v1/jobs", params={"limit": 1}).json()
        assert len(listing["items"]) == 1 and listing["next_offset"] == 1


def test_idempotency_key(service: Service, token: str, digits_cnn_zip: Path) -> None:
    with service.client(token) as client:
        model = upload_model(client, digits_cnn_zip)
        body = {
            "model_id": model["id"],
            "method": "svd",
            "rank": {"energy": 0.9},
            "evaluation": {"latency": False},
        }
        first = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "release-42"})
        again = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "release-42"})
        assert first.status_code == again.status_code == 202
        assert first.json()["id"] == again.json()["id"]
        changed = client.post(
            "/v1/jobs", json={**body, "rank": {"energy": 0.8}}, headers={"Idempotency-Key": "release-42"}
        )
        assert changed.status_code == 422
        assert changed.json()["type"].endswith("/idempotency-conflict")
        assert wait_for(client, first.json()["id"])["status"] == "succeeded"


def test_cancel_a_running_job(service: Service, token: str, digits_cnn_zip: Path) -> None:
    with service.client(token) as client:
        model = upload_model(client, digits_cnn_zip)
        dataset = digits_dataset(client)
        job = client.post(
            "/v1/jobs",
            json={
                "model_id": model["id"],
                "dataset_id": dataset["id"],
                "method": "nuclear",
                "training": {"epochs": 200},
            },
        ).json()
        for event in follow_events_until_training(client, job["id"]):
            assert event["status"] == "running"
            break
        assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
        done = wait_for(client, job["id"], timeout=60)
        assert done["status"] == "cancelled"
        assert done["progress"]["epoch"] is None or done["progress"]["epoch"] < 200


def follow_events_until_training(client, job_id: str):  # type: ignore[no-untyped-def]
    import json

    with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=120) as response:
        kind = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                event = json.loads(line[6:])
                if kind == "end":
                    raise AssertionError(f"job ended before training: {event}")
                if event["progress"].get("stage") == "train":
                    yield event
                    return


def test_missing_or_wrong_token_is_401(service: Service) -> None:
    for token in (None, "mp_not-a-key"):
        with service.client(token) as client:
            for method, path in (("GET", "/v1/models"), ("GET", "/v1/jobs/job_x"), ("POST", "/v1/jobs")):
                response = client.request(method, path, json={} if method == "POST" else None)
                assert response.status_code == 401, (token, path)
                assert response.headers["content-type"] == "application/problem+json"
                assert response.json()["type"].endswith("/unauthorized")
                assert response.headers["www-authenticate"] == "Bearer"


def test_tenants_cannot_see_each_other(service: Service, token: str, digits_cnn_zip: Path) -> None:
    other = service.create_key("globex")
    with service.client(token) as a, service.client(other) as b:
        model = upload_model(a, digits_cnn_zip)
        job = a.post(
            "/v1/jobs", json={"model_id": model["id"], "method": "svd", "evaluation": {"latency": False}}
        ).json()
        assert wait_for(a, job["id"])["status"] == "succeeded"
        for path in (
            f"/v1/models/{model['id']}",
            f"/v1/jobs/{job['id']}",
            f"/v1/jobs/{job['id']}/report",
            f"/v1/jobs/{job['id']}/artifacts/model.onnx",
            f"/v1/jobs/{job['id']}/events",
        ):
            response = b.get(path)
            assert response.status_code == 404, path
            assert response.json()["type"].endswith("/not-found")
        assert b.post(f"/v1/jobs/{job['id']}/cancel").status_code == 404
        # nor use A's model in a job of their own
        stolen = b.post("/v1/jobs", json={"model_id": model["id"], "method": "svd"})
        assert stolen.status_code == 404
        assert all(m["id"] != model["id"] for m in b.get("/v1/models").json()["items"])
        assert all(j["id"] != job["id"] for j in b.get("/v1/jobs").json()["items"])


HOSTILE = {
    "random.onnx": np.random.default_rng(0).bytes(4096),
    "pickle.onnx": b"\x80\x04\x95" + b"\x00" * 64,
    "truncated.onnx": None,  # filled from a real model in the test
    "slip.zip": None,
}


def _hostile_files(digits_cnn_zip: Path) -> dict[str, bytes]:
    import zipfile

    from tests import builders

    files = {k: v for k, v in HOSTILE.items() if v is not None}
    whole = builders.gemm(64, 32).SerializeToString()
    files["truncated.onnx"] = whole[: len(whole) // 2]
    slip = io.BytesIO()
    with zipfile.ZipFile(slip, "w") as archive:
        archive.writestr("model.onnx", whole)
        archive.writestr("../../escaped.txt", b"x")
    files["slip.zip"] = slip.getvalue()
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model.onnx", whole)
        archive.writestr("model.onnx.data", b"\0" * (64 << 20))
    files["bomb.zip"] = bomb.getvalue()
    files["notes.txt"] = b"hello"
    return files


def test_hostile_uploads_are_refused_and_leave_nothing_behind(
    service: Service, token: str, digits_cnn_zip: Path
) -> None:
    staging = service.data_dir / "artifacts" / ".tmp"
    with service.client(token) as client:
        for name, content in _hostile_files(digits_cnn_zip).items():
            response = client.post("/v1/models", files={"file": (name, content)})
            assert 400 <= response.status_code < 500, (name, response.status_code)
            assert response.headers["content-type"] == "application/problem+json", name
            problem = response.json()
            assert problem["type"].startswith("https://modelpress.dev/problems/") and problem["detail"]
        bad_npz = client.post("/v1/datasets", files={"file": ("d.npz", b"PK\x03\x04garbage")})
        assert bad_npz.status_code == 422 and bad_npz.json()["type"].endswith("/dataset-rejected")
    assert not list(staging.iterdir()) if staging.exists() else True
    assert not (service.data_dir / "artifacts" / "escaped.txt").exists()


def test_oversized_and_aborted_uploads(tmp_path: Path) -> None:
    import socket

    limited = Service(tmp_path / "small", workers=0, MODELPRESS_MAX_MODEL_BYTES="100000").start()
    try:
        token = limited.create_key("acme")
        with limited.client(token) as client:
            response = client.post("/v1/models", files={"file": ("big.onnx", b"\0" * 300_000)})
            assert response.status_code == 413
            assert response.json()["type"].endswith("/payload-too-large")
            assert (
                client.post(
                    "/v1/jobs",
                    content=b"{" + b" " * (2 << 20) + b"}",
                    headers={"content-type": "application/json"},
                ).status_code
                == 413
            )
        # a client that announces a body and hangs up half way
        with socket.create_connection(("127.0.0.1", limited.port)) as raw:
            head = (
                f"POST /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 90000\r\n\r\n"
            )
            raw.sendall(
                head.encode() + b'--b\r\nContent-Disposition: form-data; name="file"; '
                b'filename="m.onnx"\r\n\r\n' + b"\0" * 20000
            )
        with limited.client(token) as client:
            assert client.get("/healthz").status_code == 200  # the server shrugged it off
            assert client.get("/v1/models").json()["items"] == []
        staging = limited.data_dir / "artifacts" / ".tmp"
        assert not staging.exists() or not list(staging.iterdir())
    finally:
        limited.stop()


def test_local_workers_leave_the_api_a_share_of_the_cores() -> None:
    from service.settings import Settings

    assert Settings(workers=1).local_worker_threads(cores=2) == 1
    assert Settings(workers=2).local_worker_threads(cores=16) == 5
    assert Settings(workers=4).local_worker_threads(cores=2) == 1
    assert Settings(workers=1, worker_threads=3).local_worker_threads(cores=2) == 3
    # what a worker process does first, before anything imports torch
    code = (
        "from service.executors.local import cap_threads; cap_threads(1); "
        "import torch; print(torch.get_num_threads())"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "2"}  # what torch would take without the cap
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip().splitlines()[-1] == "1"
