"""Settings from the environment (``MODELPRESS_`` prefix), checked at start-up.

The defaults run everything on one machine with nothing else installed: SQLite and an
artifact folder under ``MODELPRESS_DATA_DIR``, local worker processes. Combinations that
would lose jobs or leak data are refused before the server starts.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

GiB = 1 << 30


def _memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def dataset_cap_for(memory: int) -> int:
    """The largest dataset (arrays as declared) a job may use: training holds part of it in
    memory besides the mapped file, so a quarter of the machine, and never over 4 GiB."""
    return min(4 * GiB, memory // 4)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELPRESS_", extra="ignore")

    data_dir: Path = Field(Path("modelpress-data"), description="SQLite file and artifacts (embedded mode)")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite in data_dir")
    executor: Literal["local", "celery"] = "local"
    broker_url: str | None = Field(None, description="Celery broker (redis:// or amqp://)")
    workers: int = Field(1, ge=0, le=64, description="local worker processes started by serve")
    worker_threads: int | None = Field(
        None, ge=1, le=256, description="torch threads per local worker; default cores ÷ (workers + 1)"
    )
    max_model_bytes: int = Field(2 * GiB, ge=1)
    max_dataset_bytes: int = Field(1 * GiB, ge=1)
    max_dataset_unpacked_bytes: int = Field(
        default_factory=lambda: dataset_cap_for(_memory_bytes()),
        ge=1,
        description="what a dataset's arrays may declare in all; default: a quarter of memory, at most 4 GiB",
    )
    upload_idle_seconds: float = Field(
        30.0, gt=0, description="a request body that sends nothing this long: 408"
    )
    upload_min_bytes_per_second: int = Field(
        1024, ge=0, description="a slower request body (averaged after the grace period) gets 408"
    )
    max_concurrent_jobs_per_tenant: int = Field(200, ge=1, description="unfinished (queued or running) jobs")
    max_queued_jobs_per_tenant: int = Field(100, ge=1, description="jobs waiting for a worker")
    max_sweep_runs: int = Field(200, ge=1, description="compressions one sweep may ask for")
    max_training_epochs_per_job: int = Field(
        5000, ge=1, description="training epochs one job or sweep may ask for, over all its runs"
    )
    max_storage_bytes_per_tenant: int = Field(50 * GiB, ge=0, description="uploaded models and datasets")
    retention_days: float | None = Field(
        None, gt=0, description="finished jobs, then unused models and datasets, are deleted after this"
    )
    auth_failures_per_minute: int = Field(
        20, ge=1, description="failed authentications per client address and per key prefix before 429"
    )
    event_streams_per_tenant: int = Field(20, ge=1, le=100_000, description="open /events streams per tenant")
    event_heartbeat_seconds: float = Field(15.0, gt=0, description="a comment line on a quiet event stream")
    event_poll_seconds: float = Field(0.5, gt=0, description="how often a job's one publisher reads it")
    upload_grace_seconds: float = Field(10.0, ge=0, description="how long a body may start slowly")
    max_attempts: int = Field(3, ge=1, le=20, description="runs of a job before it is failed")
    lease_seconds: float = Field(60.0, gt=0, description="a running job's lease; renewed by heartbeats")
    job_timeout_seconds: float = Field(
        6 * 3600.0, gt=0, description="longest job, from its first start; past it the job fails, timed out"
    )
    reaper_seconds: float = Field(
        15.0, gt=0, le=3600, description="how often the reaper recovers unowned jobs (docs/reliability.md)"
    )
    shutdown_grace_seconds: float = Field(
        8.0, gt=0, le=600, description="SIGTERM: how long a worker waits for its job to stop before leaving"
    )
    session_secret: SecretStr | None = Field(
        None, description="signs the dashboard's session cookie; default: generated once in data_dir"
    )
    session_max_age_seconds: int = Field(
        8 * 3600, ge=60, le=30 * 86400, description="a dashboard sign-in lasts this long"
    )
    metrics_token: SecretStr | None = Field(
        None, description="when set, GET /metrics needs 'Authorization: Bearer <this>'"
    )
    crash_on_stage: str | None = Field(None, description="testing only: kill the worker at this stage")

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'modelpress.db').resolve()}"

    def local_worker_threads(self, cores: int | None = None) -> int:
        """Threads one local worker trains with: the API keeps a share of the cores."""
        if self.worker_threads is not None:
            return self.worker_threads
        return max(1, (cores or os.cpu_count() or 1) // (max(self.workers, 1) + 1))

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Settings:
        if self.executor == "celery":
            if not self.broker_url:
                raise ValueError(
                    "MODELPRESS_EXECUTOR=celery needs MODELPRESS_BROKER_URL (redis:// or amqp://)"
                )
            if self.db_url.startswith("sqlite"):
                raise ValueError(
                    "MODELPRESS_EXECUTOR=celery needs a shared database: "
                    "set MODELPRESS_DATABASE_URL to PostgreSQL"
                )
        if self.session_secret is not None and len(self.session_secret.get_secret_value()) < 32:
            raise ValueError("MODELPRESS_SESSION_SECRET must be at least 32 characters; or unset it")
        if self.metrics_token is not None and len(self.metrics_token.get_secret_value()) < 16:
            raise ValueError("MODELPRESS_METRICS_TOKEN must be at least 16 characters; or unset it")
        if self.lease_seconds * 2 > self.job_timeout_seconds:
            raise ValueError("MODELPRESS_JOB_TIMEOUT_SECONDS must exceed twice MODELPRESS_LEASE_SECONDS")
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
