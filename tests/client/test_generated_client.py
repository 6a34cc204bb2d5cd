"""A client nobody on the team wrote: openapi-python-client generates one from the committed
openapi.yaml (offline), and it alone uploads a model, names a dataset, runs a job, reads the
typed report and downloads the artifact from a real server."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
import pytest

from compressors.onnx import metrics
from service.openapi_export import OPENAPI_YAML
from tests.harness import Service

PACKAGE = "modelpress_api"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The generated package, built with no network: a proxy that refuses every connection."""
    root = tmp_path_factory.mktemp("generated")
    config = root / "config.yaml"
    config.write_text("post_hooks: []\n")  # the formatter is not part of what is tested
    generator = shutil.which("openapi-python-client", path=str(Path(sys.executable).parent))
    assert generator, "openapi-python-client is a dev dependency: make install"
    offline = {**os.environ, "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    run = subprocess.run(
        [generator, "generate", "--path", str(OPENAPI_YAML), "--meta", "none", "--config", str(config),
         "--output-path", str(root / PACKAGE)],
        capture_output=True, text=True, env=offline, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    # every piece was generated: the generator reports what it had to leave out
    assert "Warning" not in run.stdout + run.stderr, run.stdout + run.stderr
    sys.path.insert(0, str(root))
    try:
        yield root / PACKAGE
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"{PACKAGE}.{name}")


def test_every_generated_module_imports(generated: Path) -> None:
    modules = sorted(generated.glob("api/*/*.py"))
    assert len(modules) >= 15
    for path in modules:
        if path.name != "__init__.py":
            _module(f"api.{path.parent.name}.{path.stem}")  # datasets_create did not import


def test_the_generated_client_alone_runs_upload_job_report_artifact(
    generated: Path, server: Service, token: str, digits_cnn_zip: Path
) -> None:
    api, models, types = _module("api"), _module("models"), _module("types")
    create_model = _module("api.models.models_create")
    create_dataset = _module("api.datasets.datasets_create")
    create_job, get_job = _module("api.jobs.jobs_create"), _module("api.jobs.jobs_get")
    get_report, get_artifact = _module("api.jobs.jobs_report"), _module("api.jobs.jobs_artifact")
    assert api is not None
    client = _module("client").AuthenticatedClient(base_url=server.url, token=token)

    with digits_cnn_zip.open("rb") as payload:
        upload = models.BodyModelsCreate(file=types.File(payload=payload, file_name="cnn.zip"))
        model = create_model.sync(client=client, body=upload)
    assert isinstance(model, models.ModelRecord), model  # a file part, not a text field
    assert model.retrainable and model.macs > 0

    digits = models.DatasetsCreateDatasetUploadBuiltin("digits")
    dataset = create_dataset.sync(client=client, body=models.DatasetsCreateDatasetUpload(builtin=digits))
    assert isinstance(dataset, models.DatasetRecord) and dataset.samples == 1797

    body = models.SvdJob(
        model_id=model.id,
        dataset_id=dataset.id,
        rank=models.RankSpec(target_macs=0.5),
        evaluation=models.EvaluationSpec(latency=False),
    )
    job = create_job.sync(client=client, body=body)
    assert isinstance(job, models.JobRecord), job
    assert isinstance(job.spec, models.SvdSpec) and job.spec.rank.target_macs == 0.5

    job = _wait(get_job, client, job.id)
    assert job.status.value == "succeeded", job.error
    assert [a.value for a in job.artifacts][:2] == ["model.onnx", "report.json"]

    report = get_report.sync(job.id, client=client)
    assert isinstance(report, models.CompressionReport), report
    assert report.method == "svd" and abs(report.ratios["macs"] - 0.5) <= 0.02
    assert report.before.macs > report.after.macs and report.layers[0].full_rank >= 1

    artifact = get_artifact.sync(job.id, models.JobsArtifactName("model.onnx"), client=client)
    compressed = onnx.load_from_string(artifact.payload.read())
    x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    assert metrics.predict(compressed, x).shape == (4, 10)

    missing = get_job.sync("job_missing", client=client)
    assert isinstance(missing, models.Problem) and missing.status == 404
    assert missing.type_ == "https://modelpress.dev/problems/not-found"


def _wait(get_job: ModuleType, client: Any, job_id: str, timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = get_job.sync(job_id, client=client)
        if job.status.value in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.3)
    raise TimeoutError(f"job {job_id} still {job.status} after {timeout} s")
