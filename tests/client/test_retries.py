"""Retries, idempotency and the event-stream fallback, against the real app behind a fault
injector (uvicorn on loopback in a thread), plus the retry policy on a mock transport."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from modelpress_client import (
    APIConnectionError,
    APITimeoutError,
    Client,
    ConflictError,
    DatasetRejected,
    JobFinished,
    ModelRejected,
    NotFoundError,
    NotReady,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    WaitTimeout,
    resources,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.app import create_app
from service.auth import create_key
from service.db import session_scope
from service.migrate import upgrade
from service.settings import Settings
from tests.client.conftest import problem_answer, rate_limited_then_unavailable_then_ok
from tests.harness import free_port

UNAVAILABLE = {
    "type": "https://modelpress.dev/problems/service-unavailable",
    "title": "A service this request needs is unavailable",
    "status": 503,
    "detail": "injected fault",
}


@dataclass
class FaultInjector:
    """Lets a request reach the app, then replaces the app's answer with 503 + ``Retry-After: 0``
    (as a proxy that lost the answer would): ``fail_next[(method, path)]`` times per route.
    ``break_events`` answers every event stream with 503 without reaching the app."""

    app: ASGIApp
    fail_next: dict[tuple[str, str], int] = field(default_factory=dict)
    break_events: bool = False
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        self.seen.append((method, path, {k.decode(): v.decode() for k, v in scope["headers"]}))
        if self.break_events and path.endswith("/events"):
            await self._unavailable(send)
            return
        if self.fail_next.get((method, path), 0) > 0:
            self.fail_next[(method, path)] -= 1

            async def lost(message: Message) -> None:
                return None

            await self.app(scope, receive, lost)  # the app acts (the job is created) ...
            await self._unavailable(send)  # ... but the client never hears of it
            return
        await self.app(scope, receive, send)

    @staticmethod
    async def _unavailable(send: Send) -> None:
        body = json.dumps(UNAVAILABLE).encode()
        headers = [(b"content-type", b"application/problem+json"), (b"retry-after", b"0")]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def count(self, method: str, path: str) -> int:
        return sum(1 for m, p, _ in self.seen if (m, p) == (method, path))


@dataclass
class FaultyServer:
    url: str
    token: str
    faults: FaultInjector


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultyServer]:
    """The real app with no workers (jobs stay queued unless cancelled), behind the injector."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("faulty"), workers=0)
    settings.artifacts_dir.mkdir(parents=True)
    upgrade(settings.db_url)
    with session_scope(settings.db_url) as session:
        _, token = create_key(session, "faulty")
    faults = FaultInjector(create_app(settings))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(faults, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield FaultyServer(f"http://127.0.0.1:{port}", token, faults)
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def model_id(faulty: FaultyServer, digits_cnn_zip: Path) -> str:
    with Client(faulty.url, faulty.token) as client:
        return client.models.upload(digits_cnn_zip).id


def test_two_lost_answers_make_one_job_not_three(faulty: FaultyServer, model_id: str) -> None:
    faulty.faults.fail_next[("POST", "/v1/jobs")] = 2
    before = faulty.faults.count("POST", "/v1/jobs")
    with Client(faulty.url, faulty.token) as client:
        existing = {j.id for j in client.jobs.iter()}
        job = client.jobs.create(model_id, "svd", rank={"energy": 0.9})
        created = [j for j in client.jobs.iter() if j.id not in existing]

    assert faulty.faults.count("POST", "/v1/jobs") - before == 3  # two lost answers, then one heard
    assert [j.id for j in created] == [job.id]  # one job, the one the client got
    keys = {h.get("idempotency-key") for m, p, h in faulty.faults.seen[-6:] if (m, p) == ("POST", "/v1/jobs")}
    assert len(keys) == 1 and None not in keys  # one key, reused by every retry
    # a new submission is a new job: the key is per submission, not per client
    with Client(faulty.url, faulty.token) as client:
        again = client.jobs.create(model_id, "svd", rank={"energy": 0.9})
        assert again.id != job.id
        client.jobs.cancel(again.id)
        client.jobs.cancel(job.id)


def test_retries_run_out_with_the_servers_problem(faulty: FaultyServer, model_id: str) -> None:
    faulty.faults.fail_next[("POST", "/v1/jobs")] = 2
    with (
        Client(faulty.url, faulty.token, max_retries=1) as client,
        pytest.raises(ServiceUnavailable) as caught,
    ):
        client.jobs.create(model_id, "svd", rank={"energy": 0.9})
    assert caught.value.status == 503 and caught.value.detail == "injected fault"
    faulty.faults.fail_next.clear()


def test_wait_falls_back_to_polling_when_the_stream_fails(faulty: FaultyServer, model_id: str) -> None:
    faulty.faults.break_events = True
    try:
        with Client(faulty.url, faulty.token) as client:
            job = client.jobs.create(model_id, "svd", rank={"energy": 0.9})
            path = f"/v1/jobs/{job.id}"
            timer = threading.Timer(1.0, client.jobs.cancel, [job.id])  # no workers: it stays queued
            timer.start()
            done = client.jobs.wait(job.id, timeout=30, poll_interval=0.2)
            timer.join()
        assert done.status == "cancelled"  # every terminal state ends the wait, not only success
        assert faulty.faults.count("GET", path + "/events") == 1
        assert faulty.faults.count("GET", path) >= 3  # polled at the interval, not once
    finally:
        faulty.faults.break_events = False


def test_wait_times_out_on_a_job_that_never_finishes(faulty: FaultyServer, model_id: str) -> None:
    with Client(faulty.url, faulty.token) as client:
        job = client.jobs.create(model_id, "svd", rank={"energy": 0.9})
        started = time.monotonic()
        with pytest.raises(WaitTimeout) as caught:
            client.jobs.wait(job.id, timeout=1.5)
        assert 1.4 <= time.monotonic() - started < 10
        assert caught.value.status == "queued" and caught.value.job_id == job.id
        client.jobs.cancel(job.id)


# --- the retry policy on a mock transport: no server, no sleeping -------------------------


def _client(handler: Callable[[httpx.Request], httpx.Response], **options: Any) -> tuple[Client, list[float]]:
    client = Client(
        "http://modelpress.test",
        "mp_test",
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
        **options,
    )
    sleeps: list[float] = []
    client._transport.sleep = sleeps.append
    return client, sleeps


def test_retry_after_is_honoured_and_jittered_backoff_otherwise() -> None:
    answers = rate_limited_then_unavailable_then_ok()
    client, sleeps = _client(lambda request: answers.pop(0))
    assert client.jobs.list().items == []
    assert sleeps[0] == 3.0
    assert 0.5 * 2 * 0.75 <= sleeps[1] <= 0.5 * 2  # second retry: 1 s less up to 25 % jitter
    assert not answers


def test_retries_stop_after_max_retries_and_skip_client_errors() -> None:
    calls: list[httpx.Request] = []

    def always(status: int, kind: str) -> Callable[[httpx.Request], httpx.Response]:
        def handler(request: httpx.Request) -> httpx.Response:
            calls.append(request)
            return problem_answer(status, kind)

        return handler

    for status, kind, error, attempts in (
        (429, "rate-limited", RateLimited, 3),
        (500, "internal-error", ServerError, 3),
        (404, "not-found", NotFoundError, 1),
        (422, "dataset-rejected", DatasetRejected, 1),
    ):
        calls.clear()
        client, _ = _client(always(status, kind))
        with pytest.raises(error) as caught:
            client.jobs.get("job_x")
        assert len(calls) == attempts, kind
        assert caught.value.status == status and caught.value.request_id == "rid-1"
        assert caught.value.detail == f"{kind} happened"


def test_connection_errors_and_timeouts_are_retried_then_raised() -> None:
    for exc, error in (
        (httpx.ConnectError("refused"), APIConnectionError),
        (httpx.ReadTimeout("slow"), APITimeoutError),
    ):
        calls: list[httpx.Request] = []

        def handler(
            request: httpx.Request, exc: Exception = exc, calls: list[httpx.Request] = calls
        ) -> httpx.Response:
            calls.append(request)
            raise exc

        client, sleeps = _client(handler, max_retries=3)
        with pytest.raises(error):
            client.jobs.create("mdl_x", "svd", idempotency_key="mine")
        assert len(calls) == 4 and len(sleeps) == 3
        assert {r.headers["idempotency-key"] for r in calls} == {"mine"}


def test_an_answer_that_breaks_off_is_asked_again() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)

        def body() -> Iterator[bytes]:
            yield b'{"items": [], '
            if len(calls) == 1:
                raise httpx.RemoteProtocolError("peer closed connection without sending complete body")
            yield b'"next_offset": null}'

        return httpx.Response(200, content=body())

    client, sleeps = _client(handler)
    assert client.models.list().items == [] and len(calls) == 2 and len(sleeps) == 1


def test_an_upload_is_sent_whole_on_every_attempt(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"onnx-bytes" * 1000)
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.read())
        if len(bodies) == 1:
            return problem_answer(502, "bad-gateway")
        return problem_answer(422, "model-rejected")

    client, _ = _client(handler)
    with pytest.raises(ModelRejected):
        client.models.upload(model)
    assert len(bodies) == 2 and all(b"onnx-bytes" * 1000 in body for body in bodies)


def test_a_download_that_breaks_off_is_restarted_and_never_left_half_written(tmp_path: Path) -> None:
    whole = b"0123456789" * 100_000
    attempts: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        attempts.append(1)

        def body() -> Iterator[bytes]:
            yield whole[:1000]
            if len(attempts) < 3:
                raise httpx.ReadError("connection reset")
            yield whole[1000:]

        return httpx.Response(200, content=body())

    target = tmp_path / "model.onnx"
    target.write_bytes(b"the previous model")
    client, _ = _client(handler, max_retries=1)
    with pytest.raises(APIConnectionError, match="broke off"):
        client.jobs.download("job_x", "model.onnx", target)
    assert target.read_bytes() == b"the previous model"  # untouched, not half of the new one
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temp file left behind

    attempts.clear()
    client, sleeps = _client(handler, max_retries=2)
    assert client.jobs.download("job_x", "model.onnx", target) == target
    assert target.read_bytes() == whole and len(attempts) == 3 and len(sleeps) == 2


def test_a_409_that_states_the_jobs_state_is_not_retried() -> None:
    calls: list[httpx.Request] = []

    def answer(kind: str) -> Callable[[httpx.Request], httpx.Response]:
        def handler(request: httpx.Request) -> httpx.Response:
            calls.append(request)
            return problem_answer(409, kind)

        return handler

    for kind, error, attempts in (
        ("not-ready", NotReady, 1),  # the report of a running job: asking again changes nothing
        ("job-finished", JobFinished, 1),
        ("lock-timeout", ConflictError, 3),  # a conflict that is not a job's state may pass
    ):
        calls.clear()
        client, sleeps = _client(answer(kind))
        with pytest.raises(error):
            client.jobs.report("job_x")
        assert len(calls) == attempts and len(sleeps) == attempts - 1, kind


def _flaky_job_server(outage: int, job: dict[str, Any]) -> Callable[[httpx.Request], httpx.Response]:
    """The event stream is gone, and the first ``outage`` GETs of the job find no server."""
    polls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            raise httpx.ConnectError("connection refused")
        polls.append(1)
        if len(polls) <= outage:
            raise httpx.ConnectError("connection refused")
        status = "running" if len(polls) == outage + 1 else "succeeded"
        return httpx.Response(200, json={**job, "status": status})

    return handler


JOB = {"id": "job_x", "model_id": "mdl_x", "created_at": "2026-01-01T00:00:00Z"}


def test_wait_rides_out_a_server_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resources, "OUTAGE_POLL", 0.01)
    client, _ = _client(_flaky_job_server(outage=12, job=JOB))  # 12 refused GETs: 4 polls' retries
    done = client.jobs.wait("job_x", poll_interval=0.01)
    assert done.status == "succeeded"


def test_wait_gives_up_on_an_unreachable_server_at_its_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resources, "OUTAGE_POLL", 0.01)
    client, _ = _client(_flaky_job_server(outage=10**9, job=JOB))
    started = time.monotonic()
    with pytest.raises(APIConnectionError):
        client.jobs.wait("job_x", timeout=0.5, poll_interval=0.01)
    assert 0.5 <= time.monotonic() - started < 5
