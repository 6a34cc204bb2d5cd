"""Shared fixtures: small models trained here and exported the way users export theirs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from examples import digits
from tests.harness import Service, serve_fixture

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def digits_mlp_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained 64-128-10 MLP, dynamo-exported with a symbolic batch: .onnx + .onnx.data."""
    torch.manual_seed(0)  # the initial weights too: the trained model is the same every run
    model = digits.DigitsMLP(hidden=(128,))
    digits.train_digits(model, image=False, epochs=8)
    return digits.export(model, torch.zeros(2, 64), tmp_path_factory.mktemp("mlp") / "mlp.onnx")


@pytest.fixture(scope="session")
def digits_cnn_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained digits CNN, dynamo-exported and zipped with its external data."""
    torch.manual_seed(0)  # the initial weights too: the trained model is the same every run
    model = digits.DigitsCNN(width=8)
    digits.train_digits(model, image=True, epochs=5)
    folder = tmp_path_factory.mktemp("cnn")
    path = digits.export(model, torch.zeros(2, 1, 8, 8), folder / "cnn.onnx")
    return digits.bundle(path, folder / "cnn.zip")


class TinyEncoder(torch.nn.Module):
    """Transformer-style: token projections as MatMul on (batch, seq, hidden) and attention."""

    def __init__(self, hidden: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(hidden, 4, batch_first=True)
        self.ff = torch.nn.Sequential(
            torch.nn.Linear(hidden, 4 * hidden), torch.nn.GELU(), torch.nn.Linear(4 * hidden, hidden)
        )
        self.norm = torch.nn.LayerNorm(hidden)
        self.head = torch.nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x + self.attn(x, x, x, need_weights=False)[0])
        h = h + self.ff(h)
        return self.head(h.mean(dim=1))


@pytest.fixture(scope="session")
def encoder_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return digits.export(
        TinyEncoder().eval(), torch.randn(2, 6, 32), tmp_path_factory.mktemp("enc") / "encoder.onnx"
    )


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``modelpress ARGS`` as a user runs it, in a fresh process."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        env=env,
        timeout=600,
        check=False,
    )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI=true a skipped test is a failure: a missing service must not pass quietly."""
    if os.environ.get("CI") != "true":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        reporter.write_line(f"CI=true: {len(skipped)} skipped test(s) count as failures", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


service = serve_fixture("module", "serve")  # one server for the tests of one module


@pytest.fixture(scope="module")
def token(service: Service) -> str:
    return service.create_key("acme")
