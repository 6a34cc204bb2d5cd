"""A real ``modelpress serve`` on loopback for the client tests, the client CLI as a user runs it,
and the server's answers for a mock transport."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.harness import Service, serve_fixture

server = serve_fixture("session", "client-serve")  # one server for all the client tests


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


def problem_answer(status: int, kind: str, headers: dict[str, str] | None = None) -> httpx.Response:
    """An error as the server answers it: problem+json, with request id ``rid-1``."""
    body = {"type": f"https://modelpress.dev/problems/{kind}", "title": kind, "status": status}
    return httpx.Response(
        status,
        json={**body, "detail": f"{kind} happened"},
        headers={"x-request-id": "rid-1", **(headers or {})},
    )


def rate_limited_then_unavailable_then_ok() -> list[httpx.Response]:
    """A 429 with ``Retry-After: 3``, a 503 without one, then an empty page of jobs: a list call
    that succeeds on its second retry."""
    return [
        problem_answer(429, "rate-limited", {"Retry-After": "3"}),
        problem_answer(503, "service-unavailable"),
        httpx.Response(200, json={"items": [], "next_offset": None}),
    ]
