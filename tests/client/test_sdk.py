"""The SDK against a real server over HTTP: the happy path, typed errors, pagination."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from modelpress_client import (
    AuthenticationError,
    Client,
    ConfigurationError,
    InUse,
    InvalidRequest,
    Job,
    ModelRejected,
    NotFoundError,
    NotReady,
    UnprocessableError,
)

from compressors.onnx import metrics
from tests.harness import Service


def test_upload_submit_wait_report_download(
    server: Service, token: str, digits_cnn_zip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[Job] = []
    sent: list[str] = []
    recorder = httpx.Client(event_hooks={"request": [lambda r: sent.append(f"{r.method} {r.url.path}")]})
    with Client(server.url, token, http_client=recorder) as client:
        model = client.models.upload(digits_cnn_zip)
        assert model.retrainable and model.eligible_layers and model.macs > 0
        assert client.models.get(model.id) == model
        dataset = client.datasets.builtin("digits")
        assert dataset.labelled and dataset.samples == 1797
        job = client.jobs.create(model.id, "svd", dataset.id, rank={"target_macs": 0.5})
        assert job.status == "queued" and job.spec["rank"]["target_macs"] == 0.5

        sent.clear()
        done = client.jobs.wait(job.id, progress=True, timeout=300, on_update=seen.append)

        assert done.status == "succeeded" and done.done
        assert {"model.onnx", "report.json"} <= set(done.artifacts)
        # it followed the event stream to the end: one request, every state from it, no polling
        # (the fallback would also see several states, but only by asking for the job again)
        assert sent == [f"GET /v1/jobs/{job.id}/events"], sent
        assert seen[-1] == done and len(seen) >= 2
        report = client.jobs.report(job.id)
        assert report["method"] == "svd"
        assert abs(report["ratios"]["macs"] - 0.5) <= 0.02
        assert report["before"]["accuracy"]["top1"] > 0.9
        assert set(report["after"]["latency_ms"]) == {"1", "32"}

        (tmp_path / "out").mkdir()
        path = client.jobs.download(job.id, "model.onnx", tmp_path / "out")  # a folder: name inside
        assert path == tmp_path / "out" / "model.onnx"
        artifact = onnx.load(path)
        x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
        assert metrics.predict(artifact, x).shape == (4, 10)
        assert [p.name for p in (tmp_path / "out").iterdir()] == ["model.onnx"]  # no temp file left

        assert job.id in {j.id for j in client.jobs.list(status="succeeded").items}
        assert model.id in {m.id for m in client.models.iter()}
        assert dataset.id in {d.id for d in client.datasets.iter()}
        assert client.jobs.get(job.id) == done

        # the model and dataset are in use until the job goes; then all three go, files and all
        with pytest.raises(InUse):
            client.models.delete(model.id)
        client.jobs.delete(job.id)
        client.models.delete(model.id)
        client.datasets.delete(dataset.id)
        for gone in (lambda: client.jobs.get(job.id), lambda: client.models.get(model.id)):
            with pytest.raises(NotFoundError):
                gone()
    assert "succeeded" in capsys.readouterr().err  # the progress bar went to stderr


def test_errors_are_typed_and_carry_the_problem(server: Service, token: str, tmp_path: Path) -> None:
    junk = tmp_path / "random.onnx"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with Client(server.url, token) as client:
        with pytest.raises(ModelRejected) as rejected:
            client.models.upload(junk)
        error = rejected.value
        assert isinstance(error, UnprocessableError)
        assert error.status == 422 and error.kind == "model-rejected"
        assert error.type == "https://modelpress.dev/problems/model-rejected"
        assert error.detail and error.request_id and error.request_id in str(error)

        with pytest.raises(NotFoundError) as missing:
            client.jobs.get("job_does_not_exist")
        assert missing.value.status == 404 and "job_does_not_exist" in missing.value.detail

        with pytest.raises(InvalidRequest) as invalid:
            client.jobs.create("mdl_x", "svd", rank={"energy": 2.0})
        assert invalid.value.errors and invalid.value.status == 422

    with Client(server.url, "mp_wrong") as stranger, pytest.raises(AuthenticationError) as denied:
        stranger.jobs.list()
    assert denied.value.status == 401 and denied.value.kind == "unauthorized"


def test_artifacts_of_an_unfinished_job_are_not_ready(
    server: Service, token: str, digits_cnn_zip: Path
) -> None:
    with Client(server.url, token, max_retries=0) as client:
        model = client.models.upload(digits_cnn_zip)
        job = client.jobs.create(model.id, "nuclear", client.datasets.builtin().id, training={"epochs": 200})
        try:
            with pytest.raises(NotReady) as early:
                client.jobs.report(job.id)
            assert early.value.status == 409
        finally:
            client.jobs.cancel(job.id)
        assert client.jobs.wait(job.id, timeout=120).status == "cancelled"


def test_a_client_needs_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELPRESS_TOKEN", raising=False)
    with pytest.raises(ConfigurationError, match="MODELPRESS_TOKEN"):
        Client("http://127.0.0.1:9")
    monkeypatch.setenv("MODELPRESS_TOKEN", "mp_from_env")
    monkeypatch.setenv("MODELPRESS_URL", "http://example.invalid:1234/")
    assert Client().url == "http://example.invalid:1234"
