"""Cheap requests that used to cost much, against ``modelpress serve`` on loopback: dataset
bombs, unbounded and slow bodies, oversized JSON, many event streams. Loops are bounded and
every limit is set low so that each case costs seconds."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import bombs, builders
from tests.harness import Service, upload_model

PROBLEMS = "https://modelpress.dev/problems/"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("limits")
    (root / "systmp").mkdir()
    running = Service(
        root / "data",
        workers=0,
        TMPDIR=str(root / "systmp"),  # where a form parser would spool; nothing may land there
        MODELPRESS_MAX_MODEL_BYTES="4000000",
        MODELPRESS_MAX_DATASET_BYTES="8000000",
        MODELPRESS_UPLOAD_IDLE_SECONDS="2",
        MODELPRESS_UPLOAD_MIN_BYTES_PER_SECOND="2000",
        MODELPRESS_UPLOAD_GRACE_SECONDS="2",
        MODELPRESS_EVENT_STREAMS_PER_TENANT="60",
        MODELPRESS_EVENT_HEARTBEAT_SECONDS="0.5",
    ).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def token(service: Service) -> str:
    return service.create_key("acme")


@pytest.fixture(scope="module")
def npz_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~1 MB of deflated zeros declaring 1 GiB of float32 samples."""
    return bombs.npz_bomb(tmp_path_factory.mktemp("bomb") / "bomb.npz", 1 << 30)


def _memory(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def _problem(response: httpx.Response, status: int, kind: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == PROBLEMS + kind, body
    return body


def _raw(service: Service, head: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=10)
    sock.sendall(head.encode())
    return sock


def _answer(sock: socket.socket, timeout: float = 10) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data and b"}" in data:
                break
    except OSError:
        pass
    return data


def _open_files(pid: int) -> list[str]:
    paths = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            paths.append(os.readlink(fd))
        except OSError:
            continue
    return paths


def test_an_npz_bomb_is_described_from_its_headers_and_the_api_does_not_grow(
    service: Service, token: str, npz_bomb: Path
) -> None:
    # 1 GiB declared, four at once: np.load + indexing held every array in the API (+3.8 GB)
    assert service.process is not None
    before = _memory(service.process.pid)["VmRSS"]
    results: list[httpx.Response] = []

    def upload() -> None:
        with service.client(token) as client, npz_bomb.open("rb") as f:
            results.append(client.post("/v1/datasets", files={"file": ("bomb.npz", f)}))

    threads = [threading.Thread(target=upload) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert [r.status_code for r in results] == [201] * 4, [r.text for r in results]
    assert results[0].json()["samples"] == (1 << 30) // 256
    grown = _memory(service.process.pid)["VmHWM"] - before
    assert grown < 100 << 20, f"the API's peak memory rose by {grown / 2**20:.0f} MiB"


def test_an_npz_over_the_unpacked_cap_is_refused_from_its_headers(tmp_path: Path, npz_bomb: Path) -> None:
    from fastapi.testclient import TestClient

    from service import migrate
    from service.app import create_app
    from service.auth import create_key
    from service.db import session_scope
    from service.settings import Settings

    settings = Settings(data_dir=tmp_path, workers=0, max_dataset_unpacked_bytes=512 << 20)
    migrate.upgrade(settings.db_url)
    with session_scope(settings.db_url) as session:
        _, key = create_key(session, "acme")
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"}) as client:
        response = client.post("/v1/datasets", files={"file": ("bomb.npz", npz_bomb.read_bytes())})
    body = _problem(response, 422, "dataset-rejected")
    assert "1,073,741,824" in body["detail"] or "declare" in body["detail"]


def _chunked_upload(service: Service, token: str, path: str, first: bytes) -> socket.socket:
    """A multipart upload without Content-Length, its file part begun with ``first``."""
    sock = _raw(
        service,
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.npz"\r\n\r\n' + first
    sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
    time.sleep(1.0)
    return sock


@pytest.mark.parametrize("path", ["/v1/models", "/v1/datasets"])
def test_a_chunked_upload_over_the_cap_is_413_and_never_spooled_outside_the_data_dir(
    service: Service, token: str, path: str
) -> None:
    # models read 2 GiB into the system temp folder then said 400; datasets said 500
    assert service.process is not None
    systmp = service.env["TMPDIR"]
    sock = _chunked_upload(service, token, path, b"\0" * (3 << 20))
    try:
        held = [p for p in _open_files(service.process.pid) if p.startswith(systmp)]
        assert held == [], held  # a spooled part is an unlinked file in TMPDIR
        for _ in range(10):  # 10 MB more, chunked: past both caps
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (1 << 20, b"\0" * (1 << 20)))
            except OSError:
                break
        answer = _answer(sock)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"payload-too-large" in answer
    staging = service.data_dir / "artifacts" / ".tmp"
    deadline = time.monotonic() + 5
    while staging.exists() and list(staging.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not staging.exists() or not list(staging.iterdir())


def test_a_json_body_is_held_to_the_json_limit_on_the_upload_paths(service: Service, token: str) -> None:
    # 500 MiB of JSON to /v1/datasets was read in full (+1.47 GB) before a 422
    with service.client(token) as client:
        declared = client.post(
            "/v1/datasets",
            content=b'{"builtin": "' + b"x" * (2 << 20) + b'"}',
            headers={"content-type": "application/json"},
        )
        _problem(declared, 413, "payload-too-large")

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            yield b'{"builtin": "'
            for _ in range(4):
                yield b"x" * (1 << 20)
            yield b'"}'

        streamed = client.post("/v1/datasets", content=chunks(), headers={"content-type": "application/json"})
        _problem(streamed, 413, "payload-too-large")
        assert not [d for d in client.get("/v1/datasets").json()["items"] if d["builtin"]]


def test_slow_senders_are_cut_off_and_the_api_keeps_answering(service: Service, token: str) -> None:
    # 1,000 uploads at 1 byte/s were never timed out; here 100, with a 2 s idle limit and a
    # 2,000 bytes/s minimum after a 2 s grace
    assert service.process is not None
    sockets = lambda: sum(p.startswith("socket:") for p in _open_files(service.process.pid))  # noqa: E731
    baseline = sockets()
    head = (
        f"POST /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n"
        '--b\r\nContent-Disposition: form-data; name="file"; filename="m.onnx"\r\n\r\n'
    )
    trickling = [_raw(service, head) for _ in range(80)]
    idle = [_raw(service, head) for _ in range(20)]  # these send nothing after the headers
    answers = {id(s): b"" for s in trickling + idle}
    deadline = time.monotonic() + 20
    with service.client(token) as client:
        while time.monotonic() < deadline and not all(b"\r\n\r\n" in a for a in answers.values()):
            for sock in trickling:
                with contextlib.suppress(OSError):
                    sock.sendall(b"\0")
            for sock in trickling + idle:
                sock.setblocking(False)
                with contextlib.suppress(OSError):
                    answers[id(sock)] += sock.recv(65536)
            assert client.get("/healthz").status_code == 200
            time.sleep(0.5)
    for sock in trickling + idle:
        sock.close()
    statuses = [a.split(b"\r\n", 1)[0] for a in answers.values()]
    assert statuses == [b"HTTP/1.1 408 Request Timeout"] * 100, set(statuses)
    assert all(b"request-timeout" in a for a in answers.values())
    time.sleep(1)
    assert sockets() <= baseline + 5  # the connections were closed, not held


def _queued_job(service: Service, token: str, tmp_path: Path) -> str:
    """A job that stays queued (the service runs no workers) until it is cancelled."""
    model = builders.save(builders.gemm(64, 10), tmp_path / "gemm.onnx")
    with service.client(token) as client:
        model_id = upload_model(client, model)["id"]
        response = client.post("/v1/jobs", json={"model_id": model_id, "method": "svd"})
        assert response.status_code == 202, response.text
        return str(response.json()["id"])


def _read_all(socks: list[socket.socket], seen: dict[int, bytes]) -> None:
    for sock in socks:
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            seen[id(sock)] += sock.recv(65536)


def _gauge(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"/metrics has no {name}")


def test_event_streams_share_one_publisher_send_heartbeats_and_are_capped(
    service: Service, token: str, tmp_path: Path
) -> None:
    # each stream polled the database itself in the event loop: 300 of them put /healthz at 3.7 s
    job_id = _queued_job(service, token, tmp_path)
    request = f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
    streams = [_raw(service, request) for _ in range(60)]  # the tenant's cap
    seen = {id(s): b"" for s in streams}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not all(b": keep-alive" in v for v in seen.values()):
        _read_all(streams, seen)
        time.sleep(0.2)
    assert all(v.startswith(b"HTTP/1.1 200") for v in seen.values())
    assert all(b"event: progress" in v and b'"status":"queued"' in v for v in seen.values())
    assert all(b": keep-alive" in v for v in seen.values())  # heartbeats while nothing changes
    with service.client(token) as client:
        assert _gauge(client, "modelpress_event_publishers") == 1.0  # one per job, not per stream
        assert _gauge(client, "modelpress_event_streams") == 60.0
        over = client.get(f"/v1/jobs/{job_id}/events")
        _problem(over, 429, "too-many-streams")
        assert over.headers["Retry-After"] == "5"
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(b"event: end" in v for v in seen.values()):
            _read_all(streams, seen)
            time.sleep(0.2)
        assert all(b"event: end" in v and b'"status":"cancelled"' in v for v in seen.values())
        for sock in streams:
            sock.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _gauge(client, "modelpress_event_streams"):
            time.sleep(0.2)
        assert _gauge(client, "modelpress_event_streams") == 0.0
        assert _gauge(client, "modelpress_event_publishers") == 0.0


def test_an_upload_is_published_by_rename_not_copied(tmp_path: Path) -> None:
    # publishing copied up to 2 GiB inside the async handler; a rename costs nothing
    from service.store import ArtifactStore

    store = ArtifactStore(tmp_path / "artifacts")
    with store.staging() as staging:
        staged = staging / "upload.onnx"
        staged.write_bytes(b"\0" * 4096)
        inode = staged.stat().st_ino
        published = store.publish(staged, store.folder("ten_1", "models", "mdl_1") / "upload.onnx")
        assert not staged.exists()
        assert published.stat().st_ino == inode
    assert not list(store.tmp_dir().iterdir())  # the staging folder went with the request


def test_failed_authentication_is_rate_limited_per_address_and_per_key_prefix(tmp_path: Path) -> None:
    # 1,000 wrong tokens in 20 s were all answered 401, each with a database lookup
    limited = Service(tmp_path / "auth", workers=0, MODELPRESS_AUTH_FAILURES_PER_MINUTE="10").start()
    try:
        token = limited.create_key("acme")
        statuses = []
        with limited.client(None) as client:
            for i in range(30):
                wrong = {"Authorization": f"Bearer mp_guess{i:05d}"}
                statuses.append(client.get("/v1/models", headers=wrong).status_code)
            held = client.get("/v1/models", headers={"Authorization": f"Bearer {token}"})
        assert statuses == [401] * 10 + [429] * 20
        body = _problem(held, 429, "too-many-auth-failures")  # the address is held back, key or not
        assert 1 <= int(held.headers["Retry-After"]) <= 60
        assert "try again" in body["detail"]
    finally:
        limited.stop()


def test_the_failure_counter_holds_back_a_key_prefix_from_any_address() -> None:
    from service.auth import FailedAuth
    from service.problems import Problem

    failures = FailedAuth(per_minute=3)
    for address in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        failures.check(address, "mp_AbCdEfGh-guess")
        failures.failed(address, "mp_AbCdEfGh-guess")
    with pytest.raises(Problem) as held:
        failures.check("10.0.0.4", "mp_AbCdEfGh-other")  # a fourth address, the same prefix
    assert held.value.kind == "too-many-auth-failures" and held.value.extra["retry_after"] >= 1
    failures.check("10.0.0.4", "mp_ZzZzZzZz-other")  # another prefix from it is still looked up
