"""``modelpress-client`` as CI runs it (stderr a pipe), on real jobs: exit codes 0, 1, 2, 3, 130,
and the JUnit file and JSON that every one of them leaves."""

from __future__ import annotations

import json
import signal
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from modelpress_client import Client

from tests.client.conftest import client_cli, client_process
from tests.harness import Service, free_port


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
        "submit", str(digits_cnn_zip), "--data", "digits", "--method", "nuclear", "--epochs", "1000",
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


def test_submit_bundles_the_external_data_of_a_dynamo_export(
    server: Service, token: str, digits_mlp_onnx: Path
) -> None:
    data_file = digits_mlp_onnx.with_name(digits_mlp_onnx.name + ".data")
    assert data_file.is_file()  # what torch.onnx.export(..., dynamo=True) wrote beside the graph
    run = client_cli(
        "submit", str(digits_mlp_onnx), "--data", "digits", "--method", "svd", "--energy", "0.9",
        "--no-latency", "--min-params-reduction", "1.0", "--json",
        url=server.url, token=token,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    (line,) = run.stderr.splitlines()
    assert f"{data_file.name}; uploading them together as mlp.zip" in line
    assert json.loads(run.stdout)["job"]["status"] == "succeeded"


def test_a_bad_spec_is_refused_before_anything_is_uploaded(
    server: Service, token: str, digits_cnn_zip: Path, tmp_path: Path
) -> None:
    with Client(server.url, token) as client:
        models_before = sum(1 for _ in client.models.iter())
    junit = tmp_path / "gates.xml"
    run = client_cli(
        "submit", str(digits_cnn_zip), "--data", "digits", "--method", "prune", "--target-macs", "0.5",
        "--wait", "--junit", str(junit),
        url=server.url, token=token,
    )  # fmt: skip
    assert run.returncode == 3, run.stderr  # the server CLI's code for the same spec
    (line,) = run.stderr.splitlines()
    assert line.startswith("modelpress-client: the job spec is invalid: prune: ") and "target_params" in line
    with Client(server.url, token) as client:
        assert sum(1 for _ in client.models.iter()) == models_before  # nothing was uploaded
    assert _junit(junit)["errors"] == 1


def test_gate_applies_gates_and_outputs_to_an_existing_job(
    server: Service, token: str, finished_job: str, tmp_path: Path
) -> None:
    out, report, junit = tmp_path / "small.onnx", tmp_path / "report.json", tmp_path / "gates.xml"
    run = client_cli(
        "gate", finished_job, "--min-params-reduction", "1.0", "--out", str(out), "--report", str(report),
        "--junit", str(junit), "--json",
        url=server.url, token=token,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["exit_code"] == 0 and result["job"]["id"] == finished_job
    assert result["files"] == {"model": str(out), "report": str(report), "junit": str(junit)}
    assert onnx.load(out).graph.node and json.loads(report.read_text())["method"] == "svd"
    assert _junit(junit)["tests"] == 1 and _junit(junit)["failures"] == 0

    failing = client_cli(
        "gate", finished_job, "--min-macs-reduction", "100", "--junit", str(junit),
        url=server.url, token=token,
    )  # fmt: skip
    assert failing.returncode == 1, failing.stderr
    assert "gate failed: min-macs-reduction" in failing.stderr
    assert _junit(junit)["failures"] == 1


def _failure_outputs(run: Any, junit: Path, code: int) -> dict[str, Any]:
    assert run.returncode == code, run.stderr
    assert len(run.stderr.strip().splitlines()) >= 1 and "Traceback" not in run.stderr
    parsed = _junit(junit)
    assert parsed["errors"] == 1 and parsed["cases"]["job"].find("error") is not None
    result: dict[str, Any] = json.loads(run.stdout)
    assert result["exit_code"] == code and result["error"]["message"]
    return result


def test_every_failure_before_the_job_writes_junit_and_json(
    server: Service, token: str, digits_cnn_zip: Path, tmp_path: Path
) -> None:
    junk = tmp_path / "random.onnx"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    down = f"http://127.0.0.1:{free_port()}"
    both = [str(digits_cnn_zip), "--energy", "1", "--target-macs", "1"]
    cases = [
        ("wrong token", [str(digits_cnn_zip)], server.url, "mp_wrong", 3, "unauthorized"),
        ("server down", [str(digits_cnn_zip)], down, token, 2, "connection"),
        ("rejected upload", [str(junk)], server.url, token, 2, "model-rejected"),
        ("usage", both, server.url, token, 3, "usage"),
    ]  # fmt: skip
    for name, args, url, key, code, kind in cases:
        junit = tmp_path / name / "gates.xml"
        run = client_cli(
            "submit", *args, "--data", "digits", "--method", "svd", "--wait", "--min-macs-reduction", "2",
            "--junit", str(junit), "--json",
            url=url, token=key,
        )  # fmt: skip
        result = _failure_outputs(run, junit, code)
        assert result["error"]["kind"] == kind, (name, result)
        assert _junit(junit)["cases"]["min-macs-reduction"].find("skipped") is not None, name


def test_ctrl_c_prints_the_job_id_and_how_to_resume(
    server: Service, token: str, digits_cnn_zip: Path, tmp_path: Path
) -> None:
    junit = tmp_path / "gates.xml"
    with Client(server.url, token) as client:
        before = {j.id for j in client.jobs.iter()}
        process = client_process(
            "submit", str(digits_cnn_zip), "--data", "digits", "--method", "nuclear", "--epochs", "1000",
            "--wait", "--min-macs-reduction", "2", "--junit", str(junit), "--json",
            url=server.url, token=token,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while not (created := [j for j in client.jobs.iter() if j.id not in before]):
            assert time.monotonic() < deadline and process.poll() is None, process.communicate()
            time.sleep(0.2)
        time.sleep(1.0)  # into the wait
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
        (job,) = created
        try:
            assert process.returncode == 130, stderr
            (line,) = stderr.splitlines()
            assert f"job {job.id} keeps running" in line
            assert f"modelpress-client gate {job.id} --min-macs-reduction 2.0 --junit {junit}" in line
            assert f"modelpress-client cancel {job.id}" in line
            assert client.jobs.get(job.id).status in ("queued", "running")  # left running, as it says
            assert json.loads(stdout)["job_id"] == job.id and json.loads(stdout)["exit_code"] == 130
            assert _junit(junit)["errors"] == 1
        finally:
            client.jobs.cancel(job.id)


def test_cancelling_a_finished_job_exits_2_and_says_so(
    server: Service, token: str, finished_job: str
) -> None:
    run = client_cli("cancel", finished_job, url=server.url, token=token)
    assert run.returncode == 2
    assert "409 job-finished" in run.stderr and "already succeeded" in run.stderr
