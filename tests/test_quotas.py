"""Per-tenant quotas, deleting what was stored, and the optional retention period."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service import migrate
from service.app import create_app
from service.auth import create_key
from service.db import session_scope
from service.models import Job, StoredModel, utcnow
from service.settings import Settings
from tests import builders

PROBLEMS = "https://modelpress.dev/problems/"


def _client(tmp_path: Path, **limits: Any) -> tuple[TestClient, Settings]:
    settings = Settings(data_dir=tmp_path, workers=0, **limits)
    migrate.upgrade(settings.db_url)
    with session_scope(settings.db_url) as session:
        _, token = create_key(session, "acme")
    return TestClient(create_app(settings), headers={"Authorization": f"Bearer {token}"}), settings


@pytest.fixture
def model_bytes(tmp_path: Path) -> bytes:
    return builders.save(builders.gemm(64, 10), tmp_path / "gemm.onnx").read_bytes()


def _problem(response: Any, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["type"] == PROBLEMS + kind, body
    return body


def _upload(client: TestClient, model_bytes: bytes) -> str:
    response = client.post("/v1/models", files={"file": ("gemm.onnx", model_bytes)})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_a_sweep_asking_for_too_much_training_is_refused(tmp_path: Path, model_bytes: bytes) -> None:
    # 7 methods x 20 targets x 5 seeds = 700 runs at 1,000 epochs each was accepted
    client, _ = _client(tmp_path, max_training_epochs_per_job=5000)
    with client:
        model_id = _upload(client, model_bytes)
        dataset_id = client.post("/v1/datasets", json={"builtin": "digits"}).json()["id"]
        sweep = {
            "model_id": model_id,
            "dataset_id": dataset_id,
            "methods": ["svd", "prune", "l1", "l2", "nuclear", "group_lasso", "variational"],
            "targets": [round(0.04 * i, 2) for i in range(1, 21)],
            "seeds": [0, 1, 2, 3, 4],
            "training": {"epochs": 1000},
        }
        body = _problem(client.post("/v1/sweeps", json=sweep), 422, "job-too-large")
        assert "700 compressions" in body["detail"]
        sweep.update(methods=["svd", "nuclear", "l2"], targets=[0.1 * i for i in range(1, 10)], seeds=[0])
        body = _problem(client.post("/v1/sweeps", json=sweep), 422, "job-too-large")
        assert "18,000 training epochs" in body["detail"]  # svd trains nothing
        job = {"model_id": model_id, "dataset_id": dataset_id, "method": "nuclear"}
        assert client.post("/v1/jobs", json={**job, "training": {"epochs": 1000}}).status_code == 202


def test_queued_jobs_are_capped_per_tenant_until_some_finish(tmp_path: Path, model_bytes: bytes) -> None:
    client, _ = _client(tmp_path, max_queued_jobs_per_tenant=3)
    with client:
        model_id = _upload(client, model_bytes)
        svd = {"model_id": model_id, "method": "svd"}
        ids = [client.post("/v1/jobs", json=svd).json()["id"] for _ in range(3)]
        over = client.post("/v1/jobs", json={"model_id": model_id, "method": "svd"})
        _problem(over, 429, "quota-exceeded")
        assert int(over.headers["Retry-After"]) > 0
        assert client.post(f"/v1/jobs/{ids[0]}/cancel").status_code == 202
        assert client.post("/v1/jobs", json={"model_id": model_id, "method": "svd"}).status_code == 202


def test_storage_is_capped_per_tenant_and_deleting_frees_it(tmp_path: Path, model_bytes: bytes) -> None:
    client, _ = _client(tmp_path, max_storage_bytes_per_tenant=len(model_bytes) * 3 // 2)
    with client:
        first = _upload(client, model_bytes)
        folder = tmp_path / "artifacts"
        assert any(folder.rglob(first))
        refused = client.post("/v1/models", files={"file": ("gemm.onnx", model_bytes)})
        _problem(refused, 403, "storage-quota-exceeded")
        assert client.delete(f"/v1/models/{first}").status_code == 204
        assert not any(folder.rglob(first))  # its files went with it
        _problem(client.get(f"/v1/models/{first}"), 404, "not-found")
        _upload(client, model_bytes)


def test_delete_refuses_what_is_in_use_and_removes_a_finished_jobs_artifacts(
    tmp_path: Path, model_bytes: bytes
) -> None:
    client, settings = _client(tmp_path)
    with client:
        model_id = _upload(client, model_bytes)
        dataset_id = client.post("/v1/datasets", json={"builtin": "digits"}).json()["id"]
        job_id = client.post(
            "/v1/jobs", json={"model_id": model_id, "dataset_id": dataset_id, "method": "svd"}
        ).json()["id"]
        _problem(client.delete(f"/v1/jobs/{job_id}"), 409, "conflict")  # still queued
        _problem(client.delete(f"/v1/models/{model_id}"), 409, "in-use")
        _problem(client.delete(f"/v1/datasets/{dataset_id}"), 409, "in-use")
        with session_scope(settings.db_url) as session:  # as a worker leaves a finished job
            job = session.get(Job, job_id)
            assert job is not None
            job.status, job.finished_at = "succeeded", utcnow()
            folder = settings.artifacts_dir / job.tenant_id / "jobs" / job_id
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(model_bytes)
        assert client.get(f"/v1/jobs/{job_id}/artifacts/model.onnx").status_code == 200
        assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
        assert not folder.exists()
        _problem(client.get(f"/v1/jobs/{job_id}"), 404, "not-found")
        assert client.delete(f"/v1/models/{model_id}").status_code == 204
        assert client.delete(f"/v1/datasets/{dataset_id}").status_code == 204
        assert client.get("/v1/models").json()["items"] == []


def test_retention_removes_old_finished_jobs_then_unused_uploads(tmp_path: Path, model_bytes: bytes) -> None:
    from service.retention import purge_expired

    client, settings = _client(tmp_path, retention_days=7)
    with client:
        old, kept = _upload(client, model_bytes), _upload(client, model_bytes)
        old_job = client.post("/v1/jobs", json={"model_id": old, "method": "svd"}).json()["id"]
        new_job = client.post("/v1/jobs", json={"model_id": kept, "method": "svd"}).json()["id"]
    long_ago = utcnow() - timedelta(days=30)
    with session_scope(settings.db_url) as session:
        for job_id in (old_job, new_job):
            job = session.get(Job, job_id)
            assert job is not None
            job.status = "succeeded"
            job.finished_at = long_ago if job_id == old_job else utcnow()
        for model_id in (old, kept):
            model = session.get(StoredModel, model_id)
            assert model is not None
            model.created_at = long_ago
    assert purge_expired(settings, client.app.state.store) == {"jobs": 1, "models": 1, "datasets": 0}
    with session_scope(settings.db_url) as session:
        assert session.get(Job, old_job) is None and session.get(StoredModel, old) is None
        assert session.get(Job, new_job) is not None and session.get(StoredModel, kept) is not None


def test_metrics_can_require_a_token(tmp_path: Path) -> None:
    client, _ = _client(tmp_path, metrics_token="m" * 24)
    with client:
        _problem(client.get("/metrics"), 401, "unauthorized")  # a tenant's key is not the token
        _problem(client.get("/metrics", headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
        scraped = client.get("/metrics", headers={"Authorization": "Bearer " + "m" * 24})
        assert scraped.status_code == 200 and "modelpress_jobs" in scraped.text
        assert "ten_" not in scraped.text  # no figure names a tenant
    with pytest.raises(ValueError, match="16 characters"):
        Settings(metrics_token="short")
