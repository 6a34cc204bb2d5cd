"""Real processes on loopback for service tests: ``modelpress serve`` / ``worker`` with their
own data folder, environment and port, and an HTTP client holding a tenant's key; the app in the
test's own process behind a TestClient; and the checks on answers that both kinds of client share."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.auth import create_key
from service.db import session_scope
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PROBLEMS = "https://modelpress.dev/problems/"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """``modelpress serve`` in its own process group (so a test can kill the whole tree)."""

    def __init__(self, data_dir: Path, workers: int = 1, **env: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.env = {
            **os.environ,
            "MODELPRESS_DATA_DIR": str(data_dir),
            "PYTHONUNBUFFERED": "1",
            "MODELPRESS_LEASE_SECONDS": "3",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.log = data_dir / "serve.log"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "service.cli", *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=check,
        )

    def create_key(self, tenant: str) -> str:
        return self.cli("create-key", "--tenant", tenant).stdout.strip().splitlines()[-1]

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Service:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service.cli",
                "serve",
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
            ],
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"serve exited with {self.process.returncode}: {self.log.read_text()[-2000:]}"
                )
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("serve did not become ready in 60 s")

    def worker_pids(self) -> list[int]:
        """PIDs of the local worker processes (children of serve)."""
        assert self.process is not None
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        pids = []
        for pid in out.split():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmdline:  # not multiprocessing's resource tracker
                pids.append(int(pid))
        return pids

    def kill_tree(self) -> None:
        """``kill -9`` of serve and every process it started."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill_tree()

    def client(self, token: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


def serve_fixture(scope: Literal["module", "session"], folder: str) -> Callable[..., Any]:
    """A fixture, named by the variable it is assigned to: ``modelpress serve`` with one worker and
    its data in a fresh ``folder``, started once a ``scope``."""

    @pytest.fixture(scope=scope)
    def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
        with Service(tmp_path_factory.mktemp(folder), workers=1) as running:
            yield running

    return service


@contextmanager
def app_client(settings: Settings, tenant: str, **options: Any) -> Iterator[TestClient]:
    """The app of ``settings`` (its database already migrated) in this process, each request
    carrying a new key of ``tenant``; ``options`` go to the TestClient."""
    with session_scope(settings.db_url) as session:
        _, token = create_key(session, tenant)
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(settings), headers=headers, **options) as client:
        yield client


def expect_problem(response: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    """The body of an error answer, once it is application/problem+json of this status and type."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["type"] == PROBLEMS + kind, body
    return body


def upload_model(client: httpx.Client, path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        response = client.post("/v1/models", files={"file": (path.name, f)})
    assert response.status_code == 201, response.text
    return response.json()


def digits_dataset(client: httpx.Client) -> dict[str, Any]:
    response = client.post("/v1/datasets", json={"builtin": "digits"})
    assert response.status_code == 201, response.text
    return response.json()


def wait_for(client: httpx.Client, job_id: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.3)
    raise TimeoutError(f"job {job_id} still {job['status']} after {timeout} s")


def wait_training(client: httpx.Client, job_id: str, epoch: int = 2, timeout: float = 180) -> dict[str, Any]:
    """Block until the job trains at ``epoch`` or later (so a checkpoint exists)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        progress = job["progress"]
        if (
            job["status"] == "running"
            and progress.get("stage") == "train"
            and (progress.get("epoch") or 0) >= epoch
        ):
            return dict(job)
        assert job["status"] in ("queued", "running"), job
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} never trained epoch {epoch}")


def follow_events(client: httpx.Client, job_id: str, timeout: float = 300) -> list[dict[str, Any]]:
    """Every server-sent event of a job until its ``end`` event."""
    import json

    events: list[dict[str, Any]] = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=timeout) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append({"event": kind, **json.loads(line[6:])})
                if kind == "end":
                    break
    return events
