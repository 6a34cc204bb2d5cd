"""Request handling a client generator or a fuzzer trips over: extra form fields, malformed JSON,
sweeps that cannot mean what they say, cancelling what has finished, validating a spec alone."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service import migrate
from service.db import session_scope
from service.models import Job
from service.settings import Settings
from tests import builders
from tests.harness import app_client, expect_problem


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("requests"), workers=0)
    migrate.upgrade(settings.db_url)
    with app_client(settings, "requests") as test_client:
        test_client.app.state.test_settings = settings  # type: ignore[attr-defined]
        yield test_client


@pytest.fixture(scope="module")
def model_id(client: TestClient, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = builders.save(builders.gemm(64, 10), tmp_path_factory.mktemp("m") / "gemm.onnx")
    response = client.post("/v1/models", files={"file": ("gemm.onnx", path.read_bytes())})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _npz() -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez(buffer, x=rng.random((20, 64), dtype=np.float32), y=rng.integers(0, 10, 20))
    return buffer.getvalue()


def test_a_dataset_upload_ignores_an_extra_form_field_as_a_model_upload_does(
    client: TestClient, tmp_path: Path
) -> None:
    model = builders.save(builders.gemm(64, 10), tmp_path / "gemm.onnx")
    as_model = client.post(
        "/v1/models", files={"file": ("gemm.onnx", model.read_bytes())}, data={"note": "release 1"}
    )
    assert as_model.status_code == 201, as_model.text
    as_dataset = client.post("/v1/datasets", files={"file": ("d.npz", _npz())}, data={"note": "release 1"})
    assert as_dataset.status_code == 201, as_dataset.text
    assert as_dataset.json()["samples"] == 20


def test_a_builtin_dataset_as_a_form_field_or_as_json(client: TestClient) -> None:
    # a generated client sends the one documented content type, multipart; curl users send JSON
    form = client.post("/v1/datasets", files={"builtin": (None, "digits")})
    assert form.status_code == 201, form.text
    as_json = client.post("/v1/datasets", json={"builtin": "digits"})
    assert as_json.status_code == 201, as_json.text
    assert form.json()["builtin"] == as_json.json()["builtin"] == "digits"
    both = client.post("/v1/datasets", files={"file": ("d.npz", _npz()), "builtin": (None, "digits")})
    assert "exactly one" in expect_problem(both, 422, "validation-error")["detail"]
    unknown = client.post("/v1/datasets", files={"builtin": (None, "mnist")})
    assert "digits" in expect_problem(unknown, 422, "validation-error")["detail"]


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/sweeps", "/v1/datasets", "/v1/jobs/validate"])
def test_malformed_json_is_400_as_the_readme_promises(client: TestClient, path: str) -> None:
    response = client.post(path, content=b'{"model_id": ', headers={"Content-Type": "application/json"})
    assert "JSON" in expect_problem(response, 400, "bad-request")["detail"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"methods": ["svd", "nuclear", "svd"]}, "methods"),
        ({"methods": ["nuclear"], "strengths": {"nucelar": [1.0]}}, "strengths"),
        ({"methods": ["svd"], "strengths": {"svd": [1.0]}}, "strengths"),  # svd takes no strength
    ],
)
def test_sweeps_refuse_duplicate_methods_and_unknown_strength_keys(
    client: TestClient, model_id: str, change: dict[str, Any], field: str
) -> None:
    dataset = client.post("/v1/datasets", json={"builtin": "digits"}).json()["id"]
    body = {"model_id": model_id, "dataset_id": dataset, **change}
    problem = expect_problem(client.post("/v1/sweeps", json=body), 422, "validation-error")
    assert any(field in error["loc"] for error in problem["errors"]), problem


def _finish(client: TestClient, job_id: str, status: str) -> None:
    settings: Settings = client.app.state.test_settings  # type: ignore[attr-defined]
    with session_scope(settings.db_url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.status = status
        session.commit()


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_cancelling_a_finished_job_is_409_with_a_problem_type(
    client: TestClient, model_id: str, status: str
) -> None:
    job = client.post("/v1/jobs", json={"model_id": model_id, "method": "svd"}).json()
    _finish(client, job["id"], status)
    problem = expect_problem(client.post(f"/v1/jobs/{job['id']}/cancel"), 409, "job-finished")
    assert status in problem["detail"]
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == status  # unchanged


def test_cancelling_a_queued_job_is_202(client: TestClient, model_id: str) -> None:
    job = client.post("/v1/jobs", json={"model_id": model_id, "method": "svd"}).json()
    response = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 202 and response.json()["status"] == "cancelled"


def test_a_spec_is_validated_alone_before_anything_is_uploaded(client: TestClient) -> None:
    ok = client.post("/v1/jobs/validate", json={"method": "nuclear", "rank": {"target_macs": 0.25}})
    assert ok.status_code == 200, ok.text
    spec = ok.json()
    assert spec["method"] == "nuclear" and spec["training"]["epochs"] >= 1  # defaults filled in
    bad = client.post(
        "/v1/jobs/validate", json={"method": "svd", "rank": {"energy": 0.9, "target_macs": 0.5}}
    )
    assert "exactly one" in expect_problem(bad, 422, "validation-error")["detail"]
    sparse = client.post("/v1/jobs/validate", json={"method": "prune", "rank": {"target_macs": 0.5}})
    expect_problem(sparse, 422, "validation-error")
