"""``make demo``, the newcomer's first five minutes, runs end to end (quickly, and bounded)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import onnx

from tests.conftest import ROOT


def test_make_demo_compresses_through_the_service_and_draws_the_curve(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    done = subprocess.run(
        ["make", "--no-print-directory", "demo", f"DEMO_ARGS=--quick --out {out}"],
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "160"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "original vs compressed" in done.stdout and "top-1 accuracy" in done.stdout
    for method in ("svd", "nuclear"):
        onnx.checker.check_model(onnx.load(str(out / f"digits_cnn.{method}.onnx")))
    assert (out / "curve.png").read_bytes().startswith(b"\x89PNG")
