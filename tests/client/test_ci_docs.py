"""The ready-made pipelines in docs/ci/, run as written: their ``run:`` / ``script:`` lines, in
a workspace holding what a project would (``scripts/export_onnx.py``, ``data/validation.npz``),
with the client against a real local server, which is restarted while the client waits.

The export step runs this repository's stand-in for a project's own script
(tests/client/export_onnx.py): torch.onnx.export(dynamo=True), so ``build/model.onnx`` comes
with ``build/model.onnx.data``. Two lines are not run: ``pip install modelpress-client`` (the
client is installed here, and nothing may be downloaded), and GitLab's export line, which is the
GitHub step's command word for word and would only export the same model again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
import yaml
from sklearn.datasets import load_digits

from tests.harness import Service, free_port

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "ci"
EXPORT = Path(__file__).with_name("export_onnx.py")
INSTALL = "pip install modelpress-client"
SHELL = ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c"]  # GitHub's `run:` shell


@pytest.fixture(scope="module")
def token(service: Service) -> str:
    """A key on this module's own server (tests/conftest.py's ``service``), which the pipeline
    test restarts: tests/client's ``token`` is one on the server the other client tests share."""
    return service.create_key("ci-docs")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkout as the pipelines expect it: the export script and the validation data."""
    root = tmp_path_factory.mktemp("checkout")
    (root / "scripts").mkdir()
    shutil.copy(EXPORT, root / "scripts" / "export_onnx.py")
    (root / "data").mkdir()
    x, y = load_digits(return_X_y=True)
    np.savez(root / "data" / "validation.npz", x=(x / 16.0).astype(np.float32), y=y.astype(np.int64))
    return root


@pytest.fixture(scope="module")
def exported(workspace: Path, service: Service, token: str) -> Path:
    """The workspace after the GitHub pipeline's export step, run as written."""
    export = _run(_github_steps()["Export the model"], workspace, _env(service.url, token))
    assert export.returncode == 0, export.stderr[-2000:]
    return workspace


def _env(url: str, token: str) -> dict[str, str]:
    """The job's environment: the two secrets, and this venv first on PATH (python, the client)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MODELPRESS_")}
    path = f"{Path(sys.executable).parent}{os.pathsep}{environ.get('PATH', '')}"
    return {**environ, "PATH": path, "MODELPRESS_URL": url, "MODELPRESS_TOKEN": token}


def _run(line: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SHELL, line], cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False
    )


def _github_steps() -> dict[str, str]:
    workflow = yaml.safe_load((DOCS / "github-actions.yml").read_text())
    job = workflow["jobs"]["compress"]
    assert set(job["env"]) == {"MODELPRESS_URL", "MODELPRESS_TOKEN"}
    return {step["name"]: step["run"] for step in job["steps"] if "run" in step}


def _gates(path: Path) -> dict[str, Any]:
    root = ET.parse(path).getroot()
    return {
        "errors": int(root.attrib["errors"]),
        "failures": int(root.attrib["failures"]),
        "cases": [c.attrib["name"] for c in root.iter("testcase")],
    }


def _job_running(
    service: Service, token: str, step: subprocess.Popen[str], timeout: float = 300
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with service.client(token) as client:
        while time.monotonic() < deadline and step.poll() is None:
            jobs = client.get("/v1/jobs", params={"status": "running"}).json()["items"]
            if jobs:
                return dict(jobs[0])
            time.sleep(0.2)
    _, stderr = step.communicate(timeout=60)
    raise AssertionError(f"no job started running; the step exited {step.returncode}: {stderr[-2000:]}")


def test_the_github_pipeline_survives_a_server_restart_during_wait(
    service: Service, token: str, exported: Path
) -> None:
    workspace = exported
    steps = _github_steps()
    assert list(steps) == ["Install the client (no torch needed)", "Export the model", "Compress and gate"]
    assert steps["Install the client (no torch needed)"].strip() == INSTALL
    env = _env(service.url, token)
    assert {p.name for p in (workspace / "build").iterdir()} >= {"model.onnx", "model.onnx.data"}

    compress = subprocess.Popen(
        [*SHELL, steps["Compress and gate"]],
        cwd=workspace,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        job = _job_running(service, token, compress)
        service.stop()  # a deploy restarts the server while the step waits
        time.sleep(2.0)
        service.start()
        stdout, stderr = compress.communicate(timeout=900)
    finally:
        if compress.poll() is None:
            compress.kill()
    assert compress.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert "uploading them together as model.zip" in stderr
    assert f"{job['id']}" in stdout and "PASS max-accuracy-drop" in stdout
    gates = _gates(workspace / "build" / "modelpress.xml")  # what "Publish the test report" reads
    assert gates == {"errors": 0, "failures": 0, "cases": ["max-accuracy-drop", "min-macs-reduction"]}
    assert onnx.load(workspace / "build" / "model.small.onnx").graph.node  # what upload-artifact takes
    assert (workspace / "build" / "report.json").stat().st_size > 0
    with service.client(token) as client:
        done = client.get(f"/v1/jobs/{job['id']}").json()
        # it ran across the restart, which handed it back without counting an attempt
        assert done["status"] == "succeeded" and done["started_at"] == job["started_at"]
        assert done["attempts"] == 1


@pytest.mark.parametrize(
    ("case", "code", "says"),
    [("wrong token", 3, "authentication failed"), ("server down", 2, "could not reach")],
)
def test_the_github_step_leaves_its_junit_file_on_a_failure(
    service: Service, token: str, workspace: Path, case: str, code: int, says: str
) -> None:
    assert (workspace / "build" / "model.onnx").is_file(), "runs after the pipeline test exported"
    url, key = (
        (service.url, "mp_wrong") if case == "wrong token" else (f"http://127.0.0.1:{free_port()}", token)
    )
    junit = workspace / "build" / "modelpress.xml"
    junit.unlink(missing_ok=True)
    run = _run(_github_steps()["Compress and gate"], workspace, _env(url, key))
    assert run.returncode == code, run.stderr
    assert says in run.stderr.splitlines()[-1]
    gates = _gates(junit)
    assert gates["errors"] == 1 and gates["cases"] == ["job", "max-accuracy-drop", "min-macs-reduction"]


def test_the_gitlab_job_runs_as_written(service: Service, token: str, exported: Path) -> None:
    workspace = exported
    job = yaml.safe_load((DOCS / "gitlab-ci.yml").read_text())["compress-model"]
    install, export, compress = job["script"]
    assert install == INSTALL
    assert export == _github_steps()["Export the model"]  # already run: the same model
    assert (workspace / "build" / "model.onnx.data").is_file()
    for stale in job["artifacts"]["paths"] + [job["artifacts"]["reports"]["junit"]]:
        (workspace / stale).unlink(missing_ok=True)
    run = _run(compress, workspace, _env(service.url, token))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for artifact in job["artifacts"]["paths"]:
        assert (workspace / artifact).stat().st_size > 0, artifact
    assert _gates(workspace / job["artifacts"]["reports"]["junit"])["failures"] == 0
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {token}"}) as client:
        assert client.get("/v1/jobs", params={"status": "succeeded"}).json()["items"]
