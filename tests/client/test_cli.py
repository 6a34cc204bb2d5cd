"""``modelpress-client`` as CI runs it (stderr a pipe), on real jobs: exit codes 0, 1, 2, 3."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from modelpress_client import Client

from tests.client.conftest import client_cli
from tests.harness import Service


def _junit(path: Path) -> dict[str, Any]:
    root = ET.parse(path).getroot()
    cases = root.findall(".//testcase")
    return {
        "tests": int(root.attrib["tests"]),
        "failures": int(root.attrib["failures"]),
        "errors": int(root.attrib["errors"]),
        "cases": {c.attrib["name"]: c for c in cases},
    }


def test_submit_with_passing_gates_exits_0(
    server: Service, token: str, digits_cnn_zip: Path, tmp_path: Path
) -> None:
    out, report, junit = tmp_path / "small.onnx", tmp_path / "report.json", tmp_path / "gates.xml"
    run = client_cli(
        "submit", str(digits_cnn_zip), "--data", "digits", "--method", "svd", "--target-macs", "0.5",
        "--wait", "--min-macs-reduction", "1.9", "--max-accuracy-drop", "0.3", "--max-latency-ms", "1000",
        "--out", str(out), "--report", str(report), "--junit", str(junit),
        url=server.url, token=token,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""  # no progress bar when stderr is not a terminal
    assert "MACs / sample" in run.stdout and "PASS min-macs-reduction" in run.stdout
    saved = json.loads(report.read_text())
    assert saved["method"] == "svd" and abs(saved["ratios"]["macs"] - 0.5) <= 0.02
    assert onnx.load(out).graph.node
    gates = _junit(junit)
    assert gates["tests"] == 3 and gates["failures"] == 0 and gates["errors"] == 0
    assert set(gates["cases"]) == {"min-macs-reduction", "max-accuracy-drop", "max-latency-ms"}
    assert not any(case.find("failure") is not None for case in gates["cases"].values())


def test_a_failed_gate_exits_1_and_names_it_with_the_numbers(
    server: Service, token: str, digits_cnn_zip: Path, tmp_path: Path
) -> None:
    junit = tmp_path / "gates.xml"
    run = client_cli(
        "submit", str(digits_cnn_zip), "--data", "digits", "--method", "svd", "--target-macs", "0.5",
        "--no-latency", "--min-macs-reduction", "10", "--min-params-reduction", "1.1",
        "--junit", str(junit), "--json",
        url=server.url, token=token,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    (line,) = run.stderr.splitlines()
    assert line.startswith("modelpress-client: gate failed: min-macs-reduction: MACs reduced 2.00x")
    assert "required ≥ 10x" in line
    result = json.loads(run.stdout)
    assert result["exit_code"] == 1 and result["job"]["status"] == "succeeded"
    gates = {g["name"]: g for g in result["gates"]}
    assert not gates["min-macs-reduction"]["passed"] and gates["min-params-reduction"]["passed"]
    assert gates["min-macs-reduction"]["actual"] == pytest.approx(2.0, abs=0.1)
    parsed = _junit(junit)
    assert parsed["tests"] == 2 and parsed["failures"] == 1
    failure = parsed["cases"]["min-macs-reduction"].find("failure")
    assert failure is not None and "10x" in failure.attrib["message"]


def test_a_wrong_or_missing_token_exits_3(server: Service, digits_cnn_zip: Path) -> None:
    for args in (("list",), ("submit", str(digits_cnn_zip), "--data", "digits", "--method", "svd")):
        run = client_cli(*args, url=server.url, token="mp_wrong")
        assert run.returncode == 3, run.stderr
        (line,) = run.stderr.splitlines()
        assert "authentication failed" in line and "MODELPRESS_TOKEN" in line
    run = client_cli("list", url=server.url, token=None)
    assert run.returncode == 3 and "no API token" in run.stderr


def test_usage_errors_exit_3(server: Service, token: str, digits_cnn_zip: Path) -> None:
    for args in (
        ("submit", str(digits_cnn_zip), "--data", "digits"),  # no --method
        ("submit", str(digits_cnn_zip), "--data", "digits", "--method", "svd", "--energy", "0.9",
         "--target-macs", "0.5"),
        ("submit", "missing.onnx", "--data", "digits", "--method", "svd"),
        ("submit", str(digits_cnn_zip), "--data", "missing.npz", "--method", "svd"),
        ("frobnicate",),
    ):  # fmt: skip
        run = client_cli(*args, url=server.url, token=token)
        assert run.returncode == 3, (args, run.stderr)
        assert "Traceback" not in run.stderr


def test_a_rejected_model_exits_2_with_one_line(server: Service, token: str, tmp_path: Path) -> None:
    junk = tmp_path / "random.onnx"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    run = client_cli("submit", str(junk), "--data", "digits", "--method", "svd", url=server.url, token=token)
    assert run.returncode == 2
    (line,) = run.stderr.splitlines()
    assert line.startswith("modelpress-client: 422 model-rejected: ") and "request id" in line


def test_a_failed_job_exits_2_with_one_line(
    server: Service, token: str, digits_cnn_zip: Path, tmp_path: Path
) -> None:
    data = tmp_path / "wrong-shape.npz"  # the CNN takes (N, 1, 8, 8); this is (N, 5)
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.random((64, 5), dtype=np.float32), y=rng.integers(0, 10, 64))
    junit = tmp_path / "gates.xml"
    run = client_cli(
        "submit", str(digits_cnn_zip), "--data", str(data), "--method", "svd", "--wait",
        "--min-macs-reduction", "2", "--junit", str(junit),
        url=server.url, token=token,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    (line,) = run.stderr.splitlines()
    assert line.startswith("modelpress-client: job job_") and " failed: dataset-rejected: " in line
    parsed = _junit(junit)
    assert parsed["errors"] == 1 and parsed["cases"]["job"].find("error") is not None
    assert parsed["cases"]["min-macs-reduction"].find("skipped") is not None  # its gate did not run


@pytest.fixture(scope="module")
def finished_job(server: Service, token: str, digits_cnn_zip: Path) -> str:
    with Client(server.url, token) as client:
        model = client.models.upload(digits_cnn_zip)
        job = client.jobs.create(
            model.id, "svd", client.datasets.builtin().id, rank={"energy": 0.9}, evaluation={"latency": False}
        )
        assert client.jobs.wait(job.id, timeout=300).status == "succeeded"
        return job.id


def test_status_wait_report_download_list(
    server: Service, token: str, finished_job: str, tmp_path: Path
) -> None:
    def cli(*args: str) -> str:
        run = client_cli(*args, url=server.url, token=token, cwd=tmp_path)
        assert run.returncode == 0, (args, run.stderr)
        return run.stdout

    assert "succeeded" in cli("status", finished_job)
    assert json.loads(cli("status", finished_job, "--json"))["status"] == "succeeded"
    assert json.loads(cli("wait", finished_job, "--json"))["id"] == finished_job
    report = json.loads(cli("report", finished_job, "--json", "-o", "saved.json"))
    assert report == json.loads((tmp_path / "saved.json").read_text())
    assert "parameters" in cli("report", finished_job)
    assert cli("download", finished_job).strip() == "model.onnx"  # ./NAME by default
    assert onnx.load(tmp_path / "model.onnx").graph.node
    cli("download", finished_job, "--name", "report.json", "-o", "sub/r.json")
    assert json.loads((tmp_path / "sub" / "r.json").read_text()) == report
    assert finished_job in cli("list")
    assert finished_job in {j["id"] for j in json.loads(cli("list", "--json", "--status", "succeeded"))}

    missing = client_cli("status", "job_nope", url=server.url, token=token)
    assert missing.returncode == 2 and "404 not-found" in missing.stderr


def test_cancel_then_wait_exits_2(server: Service, token: str, digits_cnn_zip: Path) -> None:
    submitted = client_cli(
        "submit", str(digits_cnn_zip), "--data", "digits", "--method", "nuclear", "--epochs", "200",
        url=server.url, token=token,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert job_id.startswith("job_")
    cancelled = client_cli("cancel", job_id, url=server.url, token=token)
    assert cancelled.returncode == 0 and job_id in cancelled.stdout
    waited = client_cli("wait", job_id, "--timeout", "120", url=server.url, token=token)
    assert waited.returncode == 2
    assert waited.stderr.strip() == f"modelpress-client: job {job_id} was cancelled"


def test_debug_logging_only_with_modelpress_log(server: Service, token: str) -> None:
    quiet = client_cli("list", url=server.url, token=token)
    assert quiet.returncode == 0 and quiet.stderr == ""
    loud = client_cli("list", url=server.url, token=token, MODELPRESS_LOG="debug")
    assert loud.returncode == 0
    assert "GET " in loud.stderr and "/v1/jobs" in loud.stderr and "request id" in loud.stderr
    assert token not in loud.stderr
