"""Faults of the distributed mode (docs/reliability.md): a Celery worker killed whole (on
Redis and on RabbitMQ), a worker stopped with SIGTERM mid-job, Redis SIGKILLed with jobs
queued, and a job submitted while the broker is down. State in a fresh PostgreSQL database
per test; Redis in the database number of ``MODELPRESS_TEST_REDIS_URL`` or a private
redis-server the test may kill; RabbitMQ in a vhost of the test's own."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.backends import PrivateRedis, fresh_postgres, unavailable
from tests.harness import Service, digits_dataset, free_port, upload_model, wait_for
from tests.test_service_celery import REDIS_URL, _start_worker, _stop_worker, _wait_for_log

LEASE = 4.0
FAST = {"MODELPRESS_LEASE_SECONDS": str(LEASE), "MODELPRESS_REAPER_SECONDS": "1"}
LONG = {
    "method": "nuclear",
    "rank": {"target_macs": 0.5},
    "training": {"epochs": 5},
    "evaluation": {"latency": False},
}
SHORT = {"method": "svd", "rank": {"target_macs": 0.5}, "evaluation": {"latency": False}}


@contextlib.contextmanager
def _rabbit_vhost() -> Iterator[str]:
    vhost = f"modelpress_faults_{uuid.uuid4().hex[:8]}"

    def ctl(*args: str) -> None:
        subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)

    try:
        ctl("add_vhost", vhost)
        ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    except (OSError, subprocess.SubprocessError) as exc:
        unavailable(f"RabbitMQ cannot make a vhost ({exc})")
    try:
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    finally:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            ctl("delete_vhost", vhost)


@contextlib.contextmanager
def _broker(kind: str) -> Iterator[str]:
    if kind == "amqp":
        with _rabbit_vhost() as url:
            yield url
        return
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.flushdb()
    except redis.RedisError as exc:
        unavailable(f"Redis at {REDIS_URL} is unreachable ({exc})")
    try:
        yield REDIS_URL
    finally:
        client.flushdb()


class Cluster:
    """serve (API and a reaper, no local workers) plus Celery workers, all on one broker."""

    def __init__(self, folder: Path, broker: str, database: str, **env: str) -> None:
        self.service = Service(
            folder,
            workers=0,
            MODELPRESS_EXECUTOR="celery",
            MODELPRESS_BROKER_URL=broker,
            MODELPRESS_DATABASE_URL=database,
            **{**FAST, **env},
        )
        self.workers: list[subprocess.Popen[bytes]] = []
        self.token = ""

    def start(self) -> Cluster:
        self.service.start()
        self.token = self.service.create_key("faults")
        return self

    def worker(self) -> subprocess.Popen[bytes]:
        return self.start_workers(1)[0]

    def start_workers(self, count: int) -> list[subprocess.Popen[bytes]]:
        """``count`` workers started side by side, once each says it is ready."""
        logs = [self.service.data_dir / f"worker{len(self.workers) + i}.log" for i in range(count)]
        started = [_start_worker(self.service.env, log) for log in logs]
        self.workers += started
        for log, process in zip(logs, started, strict=True):
            _wait_for_log(log, " ready.", timeout=90, process=process)
        return started

    def client(self) -> httpx.Client:
        return self.service.client(self.token)

    def stop(self) -> None:
        for process in self.workers:
            _stop_worker(process)
        self.service.stop()


@contextlib.contextmanager
def _cluster(tmp_path: Path, broker: str, **env: str) -> Iterator[Cluster]:
    with fresh_postgres() as database:
        cluster = Cluster(tmp_path / "data", broker, database, **env)
        try:
            yield cluster.start()
        finally:
            cluster.stop()


def _submit(client: httpx.Client, zip_path: Path, body: dict[str, Any]) -> str:
    model = upload_model(client, zip_path)
    dataset = digits_dataset(client)
    response = client.post("/v1/jobs", json={"model_id": model["id"], "dataset_id": dataset["id"], **body})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def _until(client: httpx.Client, job_id: str, test: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if test(job):
            return job
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id}: condition not met in {timeout} s; last {job}")


def _training(job: dict[str, Any]) -> bool:
    return job["status"] == "running" and job["progress"].get("stage") == "train"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["redis", "amqp"])
def test_a_celery_worker_killed_whole_is_taken_over_within_two_leases(
    kind: str, tmp_path: Path, digits_cnn_zip: Path
) -> None:
    with _broker(kind) as broker, _cluster(tmp_path, broker) as cluster:
        first, second = cluster.start_workers(2)
        with cluster.client() as client:
            job_id = _submit(client, digits_cnn_zip, LONG)
            running = _until(client, job_id, _training, 120)
            by_pid = {first.pid: first, second.pid: second}
            owner = next(p for pid, p in by_pid.items() if f":{pid}:" in _lease_owner(cluster, job_id))
            os.killpg(owner.pid, signal.SIGKILL)  # the whole worker: main process and all
            killed = time.monotonic()
            taken = _until(client, job_id, lambda j: j["attempts"] == 2 and j["status"] == "running", 60)
            takeover = time.monotonic() - killed
            print(f"{kind}: taken over after {takeover:.1f} s (lease {LEASE} s)")
            # before: the job stayed "running" until Redis' visibility timeout (hours)
            assert takeover <= 2 * LEASE, takeover
            done = wait_for(client, job_id, timeout=240)
            assert done["status"] == "succeeded", done
            assert running["attempts"] == 1 and taken["attempts"] == done["attempts"] == 2


def _lease_owner(cluster: Cluster, job_id: str) -> str:
    from sqlalchemy import create_engine, text

    engine = create_engine(cluster.service.env["MODELPRESS_DATABASE_URL"])
    try:
        with engine.connect() as connection:
            query = text("SELECT lease_owner FROM jobs WHERE id = :i")
            return str(connection.execute(query, {"i": job_id}).scalar())
    finally:
        engine.dispose()


@pytest.mark.slow
def test_sigterm_to_a_celery_worker_hands_its_job_over_without_an_attempt(
    tmp_path: Path, digits_cnn_zip: Path
) -> None:
    grace = {"MODELPRESS_SHUTDOWN_GRACE_SECONDS": "5"}
    with _broker("redis") as broker, _cluster(tmp_path, broker, **grace) as cluster:
        first, second = cluster.start_workers(2)
        with cluster.client() as client:
            job_id = _submit(client, digits_cnn_zip, LONG)
            _until(client, job_id, _training, 120)
            owner = first if f":{first.pid}:" in _lease_owner(cluster, job_id) else second
            moved = f":{owner.pid}:"
            stopped = time.monotonic()
            owner.send_signal(signal.SIGTERM)  # docker stop, a rolling deploy
            _until(client, job_id, lambda _: moved not in _lease_owner(cluster, job_id), 30)
            handed_s = time.monotonic() - stopped
            owner.wait(15)
            exit_s = time.monotonic() - stopped
            taken = _until(client, job_id, lambda j: j["status"] == "running", 60)
            again_s = time.monotonic() - stopped
            print(f"SIGTERM: job handed back after {handed_s:.1f} s, worker exited after {exit_s:.1f} s, ")
            print(f"job claimed by the other worker after {again_s:.1f} s")
            assert exit_s < 5 + 3
            done = wait_for(client, job_id, timeout=240)
            assert done["status"] == "succeeded", done
            assert taken["attempts"] == done["attempts"] == 1


@pytest.mark.slow
def test_redis_sigkilled_with_jobs_queued_loses_none(tmp_path: Path, digits_cnn_zip: Path) -> None:
    broker = PrivateRedis(tmp_path / "redis", free_port()).start()
    try:
        with _cluster(tmp_path, broker.url) as cluster, cluster.client() as client:
            model = upload_model(client, digits_cnn_zip)
            ids = []
            for i in range(3):
                body = {**SHORT, "model_id": model["id"], "rank": {"target_macs": 0.4 + i / 10}}
                response = client.post("/v1/jobs", json=body)
                assert response.status_code == 202, response.text
                ids.append(response.json()["id"])
            assert redis.Redis.from_url(broker.url).llen("modelpress") == 3  # no worker yet
            broker.kill()  # every message is gone with it
            broker.start()
            back = time.monotonic()
            cluster.worker()
            for job_id in ids:
                done = wait_for(client, job_id, timeout=120)
                assert done["status"] == "succeeded", done  # before: queued for ever
            took = time.monotonic() - back
            print(f"redis SIGKILL: 3 queued jobs done {took:.1f} s after Redis returned")
    finally:
        broker.kill()


@pytest.mark.slow
def test_a_job_submitted_while_the_broker_is_down_runs_when_it_returns(
    tmp_path: Path, digits_cnn_zip: Path
) -> None:
    broker = PrivateRedis(tmp_path / "redis", free_port()).start()
    try:
        with _cluster(tmp_path, broker.url) as cluster, cluster.client() as client:
            model = upload_model(client, digits_cnn_zip)
            broker.kill()
            started = time.monotonic()
            response = client.post("/v1/jobs", json={"model_id": model["id"], **SHORT})
            submit_s = time.monotonic() - started
            assert response.status_code == 202, response.text  # saved; sent later
            job_id = response.json()["id"]
            assert response.json()["status"] == "queued"
            broker.start()
            back = time.monotonic()
            messages = redis.Redis.from_url(broker.url)
            while messages.llen("modelpress") == 0:
                assert time.monotonic() - back < 1 + 3, "the reaper did not send the job"
                time.sleep(0.05)
            sent_s = time.monotonic() - back
            cluster.worker()
            done = wait_for(client, job_id, timeout=120)
            assert done["status"] == "succeeded", done
            print(f"broker down: submit took {submit_s:.1f} s; sent {sent_s:.1f} s after Redis returned")
    finally:
        broker.kill()
