"""Faults and hostile input met in one process (docs/reliability.md): database errors in
claim and finish, a full disk, a dead worker's job cancelled, the reaper, errors that must
not reach a tenant verbatim, NUL bytes, Idempotency-Key edge cases, reports with NaN, labels
out of range, and /metrics that only ever counts up."""

from __future__ import annotations

import errno
import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from onnx import numpy_helper
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from compressors import DatasetRejected, TrainingDiverged, strict_json
from service import migrate, queue, reaper, worker
from service.db import session_scope
from service.models import Job, utcnow
from service.routes import jobs as job_routes
from service.runner import run_job
from service.settings import Settings
from service.spec import parse_spec
from tests import builders
from tests.backends import fresh_postgres
from tests.harness import PROBLEMS, app_client, expect_problem


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings(data_dir=tmp_path / "data", workers=0, lease_seconds=2, reaper_seconds=0.2)
    migrate.upgrade(settings.db_url)
    return settings


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with app_client(settings, "faults", raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def model_id(client: TestClient, tmp_path: Path) -> str:
    path = builders.save(builders.gemm(64, 10), tmp_path / "gemm.onnx")
    response = client.post("/v1/models", files={"file": ("gemm.onnx", path.read_bytes())})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _submit(client: TestClient, model_id: str, **headers: str) -> Any:
    return client.post("/v1/jobs", json={"model_id": model_id, "method": "svd"}, headers=headers)


def _set(settings: Settings, job_id: str, **values: Any) -> None:
    with session_scope(settings.db_url) as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))


def _job(settings: Settings, job_id: str) -> Job:
    with session_scope(settings.db_url, readonly=True) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


class Flaky:
    """Raises a database error the first ``failures`` calls, then calls through."""

    def __init__(self, real: Any, failures: int, message: str = "server closed the connection") -> None:
        self.real, self.failures, self.calls = real, failures, 0

        self.message = message

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise OperationalError("UPDATE jobs SET ...", {}, Exception(self.message))
        return self.real(*args, **kwargs)


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue, "RETRY_DELAYS", (0.01, 0.02, 0.04))


def test_a_database_error_in_claim_is_retried_not_dropped(
    settings: Settings, client: TestClient, model_id: str, monkeypatch: pytest.MonkeyPatch, fast_retries: None
) -> None:
    job_id = _submit(client, model_id).json()["id"]
    flaky = Flaky(queue.session_scope, failures=2)
    monkeypatch.setattr(queue, "session_scope", flaky)
    claimed = queue.claim(settings, "w1", job_id)
    assert claimed is not None and claimed.id == job_id and flaky.calls == 3
    assert _job(settings, job_id).status == "running"


def test_a_database_error_in_finish_is_retried_and_the_job_ends(
    settings: Settings, client: TestClient, model_id: str, monkeypatch: pytest.MonkeyPatch, fast_retries: None
) -> None:
    job_id = _submit(client, model_id).json()["id"]
    job = queue.claim(settings, "w1", job_id)
    assert job is not None
    monkeypatch.setattr(worker, "_run", lambda *_: ("succeeded", None))  # the work is done...
    monkeypatch.setattr(queue, "session_scope", Flaky(queue.session_scope, failures=2))  # ...then
    assert worker.execute(settings, job, "w1") == "succeeded"
    done = _job(settings, job_id)
    assert done.status == "succeeded" and done.lease_owner is None


def test_a_claim_that_keeps_failing_leaves_the_job_queued_for_the_reaper(
    settings: Settings, client: TestClient, model_id: str, monkeypatch: pytest.MonkeyPatch, fast_retries: None
) -> None:
    from service.executors import celery

    job_id = _submit(client, model_id).json()["id"]
    monkeypatch.setattr(celery, "get_settings", lambda: settings)
    with monkeypatch.context() as m:
        m.setattr(queue, "session_scope", Flaky(queue.session_scope, failures=100))
        assert celery.run_job_task(None, job_id) == "deferred"
    assert _job(settings, job_id).status == "queued"  # not acked away: still there to send again
    sent: list[str] = []
    executor = _Recorder(sent, depth=0)
    _set(settings, job_id, dispatched_at=utcnow() - timedelta(seconds=5))
    assert reaper.reap(settings, executor).sent == [job_id] == sent


class _Recorder:
    dispatches = True

    def __init__(self, sent: list[str], depth: int | None) -> None:
        self.sent, self._depth = sent, depth

    def submit(self, job_id: str) -> None:
        self.sent.append(job_id)

    def depth(self) -> int | None:
        return self._depth

    def check(self) -> str:
        return "ok"


def test_the_reaper_resends_expired_leases_and_lost_messages_only(
    settings: Settings, client: TestClient, model_id: str
) -> None:
    ids = [_submit(client, model_id).json()["id"] for _ in range(3)]
    long_ago = utcnow() - timedelta(seconds=30)
    _set(
        settings, ids[0], status="running", lease_owner="dead", lease_expires=long_ago, dispatched_at=long_ago
    )
    _set(settings, ids[1], dispatched_at=long_ago)  # queued, its message lost
    # ids[2]: queued, just sent
    sent: list[str] = []
    # the broker holds one message while two jobs are queued: one was lost
    assert reaper.reap(settings, _Recorder(sent, depth=1)).sent == [ids[0], ids[1]]
    assert reaper.reap(settings, _Recorder(sent, depth=1)).sent == []  # just stamped: not again
    _set(settings, ids[1], dispatched_at=long_ago)
    # as many messages as queued jobs: nothing is missing, nothing is sent
    assert reaper.reap(settings, _Recorder(sent, depth=2)).sent == []


def test_cancelling_a_job_whose_worker_died_is_immediate(
    settings: Settings, client: TestClient, model_id: str
) -> None:
    job_id = _submit(client, model_id).json()["id"]
    assert queue.claim(settings, "dead-worker", job_id) is not None
    _set(settings, job_id, lease_expires=utcnow() - timedelta(seconds=1))
    response = client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 202 and response.json()["status"] == "cancelled", response.text


def test_a_cancel_asked_while_the_lease_was_live_ends_when_it_expires(
    settings: Settings, client: TestClient, model_id: str
) -> None:
    job_id = _submit(client, model_id).json()["id"]
    assert queue.claim(settings, "worker-about-to-die", job_id) is not None
    response = client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.json()["status"] == "running"  # a live owner stops at its next step
    _set(settings, job_id, lease_expires=utcnow() - timedelta(seconds=1))  # ...but it died
    assert reaper.reap(settings, _Recorder([], depth=None)).cancelled == [job_id]
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"


def test_the_reaper_fails_a_job_past_its_time_limit(
    settings: Settings, client: TestClient, model_id: str
) -> None:
    job_id = _submit(client, model_id).json()["id"]
    assert queue.claim(settings, "stuck-worker", job_id) is not None
    started = utcnow() - timedelta(seconds=settings.job_timeout_seconds + 3 * settings.lease_seconds)
    _set(settings, job_id, started_at=started)
    assert reaper.reap(settings, _Recorder([], depth=None)).timed_out == [job_id]
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "failed" and "timed out" in job["error"]["detail"]
    assert job["error"]["type"] == PROBLEMS + "job-timed-out"


def test_a_released_job_does_not_count_the_attempt(
    settings: Settings, client: TestClient, model_id: str
) -> None:
    job_id = _submit(client, model_id).json()["id"]
    for _ in range(settings.max_attempts + 2):
        assert queue.claim(settings, "restarting-worker", job_id) is not None
        assert queue.release(settings, job_id, "restarting-worker")
    job = _job(settings, job_id)
    assert job.status == "queued" and job.attempts == 0


def test_an_unexpected_job_error_reaches_the_tenant_as_a_reference_only(
    settings: Settings,
    client: TestClient,
    model_id: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    job_id = _submit(client, model_id).json()["id"]
    secret = "/srv/modelpress/ten_x/jobs: SELECT password FROM api_keys"

    def boom(*_: Any, **__: Any) -> None:
        raise RuntimeError(secret)

    monkeypatch.setattr(worker, "run_job", boom)
    job = queue.claim(settings, "w1", job_id)
    assert job is not None
    with caplog.at_level(logging.ERROR, logger="modelpress.worker"):
        assert worker.execute(settings, job, "w1") == "failed"
    error = client.get(f"/v1/jobs/{job_id}").json()["error"]
    assert secret not in json.dumps(error) and "RuntimeError" not in json.dumps(error)
    assert error["reference"] in error["detail"]
    assert any(error["reference"] in r.getMessage() and r.exc_info for r in caplog.records)


def test_a_full_disk_answers_507_and_the_upload_leaves_no_staging(
    settings: Settings, client: TestClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from service import uploads

    def full(*_: Any, **__: Any) -> None:  # the disk fills while the upload is written
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(uploads._Reader, "on_part_data", full)
    path = builders.save(builders.gemm(64, 10), tmp_path / "gemm.onnx")
    response = client.post("/v1/models", files={"file": ("gemm.onnx", path.read_bytes())})
    problem = expect_problem(response, 507, "insufficient-storage")
    assert response.headers["retry-after"] and "No space" not in problem["detail"]
    assert list((settings.artifacts_dir / ".tmp").iterdir()) == []


def test_a_full_database_makes_the_worker_back_off_not_crash(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[float] = []

    def full(*_: Any, **__: Any) -> None:
        calls.append(time.monotonic())
        raise OperationalError("UPDATE jobs", {}, Exception("database or disk is full"))

    monkeypatch.setattr(queue, "claim", full)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run_local_worker, args=(settings, 0.01, stop), daemon=True)
    thread.start()
    time.sleep(3.5)
    assert thread.is_alive()  # before: the exception ended the worker (and serve restarted it)
    stop.set()
    thread.join(10)
    assert 2 <= len(calls) <= 3, calls  # 1 s, then 2 s between tries; a poll loop would make hundreds


def _multipart(field: str, filename: bytes, content: bytes) -> tuple[bytes, str]:
    """A multipart body with the file name's bytes as a raw client (curl) sends them;
    httpx would percent-encode a NUL."""
    boundary = "x" * 16
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="'.encode()
        + filename
        + b'"\r\nContent-Type: application/octet-stream\r\n\r\n'
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db_client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    """A client on SQLite, or on a fresh PostgreSQL database (NUL is PostgreSQL's fault)."""
    url = None
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
    settings = Settings(data_dir=tmp_path / "nul", workers=0, database_url=url)
    migrate.upgrade(settings.db_url)
    with app_client(settings, "nul") as c:
        yield c
    if url:
        from service.db import engine_for

        engine_for(url).dispose()


def test_a_nul_byte_in_an_uploaded_file_name_is_cleaned_and_the_name_kept(
    any_db_client: TestClient, tmp_path: Path
) -> None:
    path = builders.save(builders.gemm(64, 10), tmp_path / "gemm.onnx")
    body, kind = _multipart("file", b"../resnet\x00 v2\x07.onnx", path.read_bytes())
    response = any_db_client.post("/v1/models", content=body, headers={"Content-Type": kind})
    assert response.status_code == 201, response.text
    assert response.json()["filename"] == "resnet v2.onnx"
    data = io.BytesIO()
    np.savez(data, x=np.zeros((4, 64), np.float32), y=np.zeros(4, np.int64))
    body, kind = _multipart("file", b"cal\x00ib.npz", data.getvalue())
    response = any_db_client.post("/v1/datasets", content=body, headers={"Content-Type": kind})
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "calib.npz"


@pytest.mark.parametrize("key", ["", "k" * 201, "\t"])
def test_an_empty_or_overlong_idempotency_key_is_a_422(client: TestClient, model_id: str, key: str) -> None:
    started = time.monotonic()
    for _ in range(2):
        expect_problem(_submit(client, model_id, **{"Idempotency-Key": key}), 422, "validation-error")
    assert time.monotonic() - started < 10


def test_the_idempotency_insert_race_is_retried_a_bounded_number_of_times(
    client: TestClient, model_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _submit(client, model_id, **{"Idempotency-Key": "race"}).status_code == 202
    # a reader that never sees the winner's row (as under a long replication lag): every
    # insert meets the unique index; before, _create recursed until the stack ran out
    monkeypatch.setattr(job_routes, "_existing", lambda *_: None)
    expect_problem(_submit(client, model_id, **{"Idempotency-Key": "race"}), 409, "conflict")


def test_reports_with_nan_are_valid_json() -> None:
    text = strict_json({"loss": float("nan"), "curve": [1.0, float("inf")], "ok": 0.5})
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}")) == {
        "loss": None,
        "curve": [1.0, None],
        "ok": 0.5,
    }


def test_labels_out_of_range_in_the_training_split_only_are_refused_before_work(tmp_path: Path) -> None:
    model = builders.save(builders.gemm(64, 10), tmp_path / "gemm.onnx")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 40)
    y[3] = 15  # the training split only; the held-out labels are fine
    np.savez(
        tmp_path / "d.npz",
        x=rng.random((40, 64), dtype=np.float32),
        y=y,
        x_val=rng.random((10, 64), dtype=np.float32),
        y_val=rng.integers(0, 10, 10),
    )
    spec = parse_spec({"method": "nuclear", "training": {"epochs": 1}, "evaluation": {"latency": False}})
    with pytest.raises(DatasetRejected, match=r"'y' holds label 15 .* 10 classes"):
        run_job(spec, model, tmp_path / "d.npz", tmp_path / "w", tmp_path / "o")


def test_the_duration_histogram_counts_every_finished_job_once(
    settings: Settings, client: TestClient, model_id: str
) -> None:
    with session_scope(settings.db_url) as session:
        tenant_id = session.get(Job, _submit(client, model_id).json()["id"]).tenant_id  # type: ignore[union-attr]
        now = utcnow()
        for i in range(1005):
            session.add(
                Job(
                    tenant_id=tenant_id,
                    model_id=model_id,
                    spec={},
                    status="succeeded",
                    progress={},
                    finished_at=now + timedelta(seconds=i),
                    duration_s=float(i % 20),
                )
            )

    def count() -> float:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith("modelpress_job_duration_seconds_count"):
                return float(line.split()[-1])
        raise AssertionError("no duration histogram")

    assert count() == 1005  # before: rebuilt from the last 1,000 jobs at each scrape
    assert count() == 1005  # a scrape observes nothing itself
    metrics = client.get("/metrics").text
    assert 'modelpress_jobs{state="queued"} 1.0' in metrics and "modelpress_queue_depth 1.0" in metrics


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with fresh_postgres() as url:
        yield url


def test_a_diverging_run_fails_with_the_reason_on_either_database(
    any_db_client: TestClient, digits_cnn_zip: Path
) -> None:
    client = any_db_client
    settings: Settings = client.app.state.settings  # type: ignore[attr-defined]
    model = client.post("/v1/models", files={"file": ("cnn.zip", digits_cnn_zip.read_bytes())}).json()
    # finite inputs whose activations overflow float32: the loss turns non-finite at step one,
    # every time (lr 10 with strength 1e6, as reported, now ends finite but useless)
    data = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez(data, x=np.full((64, 1, 8, 8), 3e38, np.float32), y=rng.integers(0, 10, 64))
    dataset = client.post("/v1/datasets", files={"file": ("huge.npz", data.getvalue())}).json()
    body = {
        "model_id": model["id"],
        "dataset_id": dataset["id"],
        "method": "nuclear",
        "rank": {"target_macs": 0.5},
        "training": {"epochs": 2, "lr": 10.0, "strength": 1e6},
        "evaluation": {"latency": False},
    }
    job_id = client.post("/v1/jobs", json=body).json()["id"]
    job = queue.claim(settings, "w1", job_id)
    assert job is not None
    # before: SQLite said "succeeded" with every weight NaN; PostgreSQL a 500 quoting SQL
    assert worker.execute(settings, job, "w1") == "failed"
    record = client.get(f"/v1/jobs/{job_id}").json()
    assert record["error"]["type"] == PROBLEMS + "training-diverged", record["error"]
    assert record["error"]["detail"].startswith("training diverged: ")
    assert client.get(f"/v1/jobs/{job_id}/report").status_code == 409


def test_a_model_with_non_finite_weights_is_never_published(tmp_path: Path) -> None:
    model = builders.gemm(64, 10)
    bias = model.graph.initializer[-1]  # factorizing leaves the bias as it is
    values = numpy_helper.to_array(bias).copy()
    values[0] = np.nan
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    path = builders.save(model, tmp_path / "nan.onnx")
    spec = parse_spec({"method": "svd", "rank": {"energy": 0.9}, "evaluation": {"latency": False}})
    with pytest.raises(TrainingDiverged, match="not finite"):
        run_job(spec, path, None, tmp_path / "w", tmp_path / "o")
    assert not (tmp_path / "o" / "model.onnx").exists()
