"""A real ``modelpress serve`` on loopback for the client tests, and the client CLI as a user runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Service


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with Service(tmp_path_factory.mktemp("client-serve"), workers=1) as running:
        yield running


@pytest.fixture(scope="session")
def token(server: Service) -> str:
    return server.create_key("client-tests")


def client_env(url: str, token: str | None, **env: str) -> dict[str, str]:
    """This environment without MODELPRESS_*, then the client's URL and token."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MODELPRESS_")}
    environ |= {"MODELPRESS_URL": url, **env}
    if token is not None:
        environ["MODELPRESS_TOKEN"] = token
    return environ


def client_script() -> str:
    script = shutil.which("modelpress-client", path=str(Path(sys.executable).parent))
    assert script, "install the client first: pip install -e clients/python"
    return script


def client_cli(
    *args: str, url: str, token: str | None, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """``modelpress-client ARGS`` in a fresh process, with MODELPRESS_URL/TOKEN set, stderr a pipe."""
    return subprocess.run(
        [client_script(), *args],
        capture_output=True,
        text=True,
        env=client_env(url, token, **env),
        cwd=cwd,
        timeout=600,
        check=False,
    )


def client_process(*args: str, url: str, token: str | None, **env: str) -> subprocess.Popen[str]:
    """``modelpress-client ARGS`` started, not waited for (to interrupt it)."""
    return subprocess.Popen(
        [client_script(), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=client_env(url, token, **env),
    )
