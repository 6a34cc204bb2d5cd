"""What can be tested of the image without a Docker engine: its entry points exist and start,
its health check works, and the compose file parses into settings the service accepts."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from service.settings import Settings
from tests.harness import ROOT, Service


def _instruction(name: str) -> str:
    lines = (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    found = [line.split(None, 1)[1] for line in lines if line.startswith(name + " ")]
    assert found, f"no {name} in the Dockerfile"
    return found[-1]


def test_dockerfile_runs_as_non_root_with_the_cli_entrypoint() -> None:
    assert json.loads(_instruction("ENTRYPOINT")) == ["modelpress"]
    assert json.loads(_instruction("CMD"))[0] == "serve"
    assert _instruction("USER") == "modelpress"
    assert "FROM" in (ROOT / "Dockerfile").read_text().split("AS build")[1]  # multi-stage
    assert "torch==2.14.1" in (ROOT / "Dockerfile").read_text()


def test_image_entrypoints_start_and_the_healthcheck_passes(tmp_path: Path) -> None:
    # CMD: serve; the HEALTHCHECK probes /healthz with the image's own python
    service = Service(tmp_path / "data", workers=0).start()
    try:
        probe = json.loads(_instruction("HEALTHCHECK").split("CMD", 1)[1].strip())
        script = probe[2].replace("8000", str(service.port))
        assert subprocess.run([sys.executable, "-c", script], timeout=30).returncode == 0
    finally:
        service.stop()
    # the worker entry point starts, and refuses to run without its distributed settings
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "worker"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "MODELPRESS_DATA_DIR": str(tmp_path)},
        timeout=60,
    )
    assert done.returncode == 3
    assert "MODELPRESS_EXECUTOR=celery" in done.stderr


def test_compose_file_describes_the_distributed_mode() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"api", "worker", "redis", "postgres"} <= set(services)
    assert services["api"]["command"][0] == "serve" and services["worker"]["command"] == ["worker"]
    env = services["api"]["environment"]
    assert env == services["worker"]["environment"]
    settings = Settings(**{k.removeprefix("MODELPRESS_").lower(): v for k, v in env.items()})
    assert settings.executor == "celery" and settings.db_url.startswith("postgresql")
    assert services["api"]["volumes"] == services["worker"]["volumes"]  # one shared artifact store


def test_unsafe_settings_are_refused_at_start_up(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "MODELPRESS_DATA_DIR": str(tmp_path),
        "MODELPRESS_EXECUTOR": "celery",
        "MODELPRESS_BROKER_URL": "redis://127.0.0.1:6379/0",
    }
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert done.returncode == 3
    assert re.search(r"MODELPRESS_DATABASE_URL", done.stderr)
    assert len(done.stderr.strip().splitlines()) == 1, shlex.quote(done.stderr)
