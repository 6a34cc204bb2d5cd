"""The client installs on its own, with its own dependencies only: never torch, numpy or onnx."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "python"
FORBIDDEN = {"torch", "numpy", "onnx", "onnxruntime", "scikit-learn", "fastapi", "sqlalchemy"}


@pytest.mark.slow
def test_installs_into_a_fresh_venv_without_torch(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    bin_dir = venv / "bin"
    # a copy of clients/python alone: the distribution needs nothing else from this repository
    # (and pip's build/ and .egg-info land in tmp, not in the working tree)
    source = tmp_path / "modelpress-client"
    shutil.copytree(CLIENT, source, ignore=shutil.ignore_patterns("build", "*.egg-info", ".*_cache"))
    env = {k: v for k, v in os.environ.items() if k not in ("PIP_NO_DEPS", "VIRTUAL_ENV", "PYTHONPATH")}
    install = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--disable-pip-version-check", str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    listed = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env=env,
    )
    installed = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"modelpress-client", "httpx", "pydantic", "rich"} <= installed
    assert not installed & FORBIDDEN, installed & FORBIDDEN

    usage = subprocess.run(
        [str(bin_dir / "modelpress-client"), "--help"], capture_output=True, text=True, timeout=60, env=env
    )
    assert usage.returncode == 0 and "submit" in usage.stdout
    no_token = subprocess.run(
        [str(bin_dir / "modelpress-client"), "list"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in env.items() if not k.startswith("MODELPRESS_")},
    )
    assert no_token.returncode == 3 and "MODELPRESS_TOKEN" in no_token.stderr
