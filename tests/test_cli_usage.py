"""The server CLI's exit codes for what a user mistypes, and its one debug switch."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import builders
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def gemm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return builders.save(builders.gemm(64, 10), tmp_path_factory.mktemp("usage") / "gemm.onnx")


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--targets", "a,b"], "--targets must be comma-separated numbers"),
        (["--seeds", "0,x"], "--seeds must be comma-separated numbers"),
        (["--methods", "svd,svd"], "list each method once"),
        (["--methods", "svd,pca"], "unknown method 'pca'"),
        (["--targets", "1.5"], "targets"),
        (["--methods", "nuclear", "--strengths", "nucelar=1,3"], "no strength grid for nucelar"),
    ],
)
def test_sweep_usage_errors_exit_3_with_one_line(
    gemm: Path, tmp_path: Path, flags: list[str], says: str
) -> None:
    run = run_cli("sweep", str(gemm), "--data", "digits", *flags, "-o", str(tmp_path / "curve"))
    assert run.returncode == 3, run.stderr  # 1 is for a failed quality gate
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith("modelpress: usage: ") and says in line, line
    assert not (tmp_path / "curve").exists()  # refused before any work


def test_debug_logging_shows_the_traceback_the_one_line_hides(
    gemm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07" * 50)
    for args, kind in (
        (["compress", str(junk), "-o", str(tmp_path / "a.onnx")], "model-rejected"),  # rejected input
        (["compress", str(gemm), "--no-latency", "-o", "/proc/modelpress.onnx"], "job-failed"),  # a crash
    ):
        quiet = run_cli(*args)
        assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
        assert quiet.stderr.strip().splitlines()[-1].startswith(f"modelpress: {kind}: ")
        monkeypatch.setenv("MODELPRESS_LOG", "debug")
        loud = run_cli(*args)
        monkeypatch.delenv("MODELPRESS_LOG")
        assert loud.returncode == 2
        assert "Traceback (most recent call last)" in loud.stderr, loud.stderr
        assert loud.stderr.strip().splitlines()[-1] == quiet.stderr.strip().splitlines()[-1]
