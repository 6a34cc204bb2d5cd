"""Before the test run: make sure the services the distributed-mode tests need answer.

Under CI=true a service that cannot be reached or started is a failure (exit 1), never a
reason to skip. Locally the tests that need it skip with the reason instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

SERVICES = {
    "redis": (
        6379,
        [
            "redis-server",
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
    ),
    "postgresql": (5432, None),  # started below with pg_ctlcluster
}


def reachable(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start(name: str) -> None:
    if name == "postgresql" and shutil.which("pg_ctlcluster") and os.path.isdir("/etc/postgresql"):
        version = sorted(os.listdir("/etc/postgresql"))[-1]
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"], check=False)
    elif SERVICES[name][1] and shutil.which(SERVICES[name][1][0]):
        subprocess.run(SERVICES[name][1], check=False)


def main() -> int:
    missing = []
    for name, (port, _) in SERVICES.items():
        if not reachable(port):
            start(name)
            for _ in range(30):
                if reachable(port):
                    break
                time.sleep(0.5)
        if not reachable(port):
            missing.append(f"{name} (127.0.0.1:{port})")
    if missing:
        message = "not reachable and could not be started: " + ", ".join(missing)
        if os.environ.get("CI") == "true":
            print(f"services: {message}", file=sys.stderr)
            return 1
        print(f"services: {message}; the tests that need them will skip (they fail under CI=true)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
