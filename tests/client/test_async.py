"""``AsyncClient``: the same resources from an event loop, against a real server and a mock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from modelpress_client import AsyncClient, Client, Job, JobFinished, NotReady, RateLimited, resources

from compressors.onnx import metrics
from tests.client.conftest import problem_answer, rate_limited_then_unavailable_then_ok
from tests.harness import Service


def test_the_whole_flow_from_an_event_loop(
    server: Service, token: str, digits_mlp_onnx: Path, tmp_path: Path
) -> None:
    async def flow() -> tuple[Job, dict[str, Any], Path, list[Job], set[str]]:
        seen: list[Job] = []
        async with AsyncClient(server.url, token) as client:
            model = await client.models.upload(digits_mlp_onnx)  # .onnx + .onnx.data: bundled
            dataset = await client.datasets.builtin()
            spec = await client.jobs.validate("svd", rank={"target_params": 0.5})
            assert spec["rank"]["target_params"] == 0.5 and spec["training"]["epochs"] >= 1
            job = await client.jobs.create(
                model.id, "svd", dataset.id, rank={"target_params": 0.5}, evaluation={"latency": False}
            )
            done = await client.jobs.wait(job.id, timeout=300, on_update=seen.append)
            report = await client.jobs.report(job.id)
            path = await client.jobs.download(job.id, "model.onnx", tmp_path / "small.onnx")
            listed = {j.id async for j in client.jobs.iter(status="succeeded")}
            with pytest.raises(JobFinished):
                await client.jobs.cancel(job.id)
            return done, report, path, seen, listed

    done, report, path, seen, listed = asyncio.run(flow())
    assert done.status == "succeeded" and seen[-1] == done and done.id in listed
    assert report["method"] == "svd" and abs(report["ratios"]["params"] - 0.5) <= 0.05
    x = np.random.default_rng(0).random((3, 64), dtype=np.float32)
    assert metrics.predict(onnx.load(path), x).shape == (3, 10)
    with Client(server.url, token) as sync:  # the same records as the synchronous client's
        assert sync.jobs.get(done.id) == done


def _mock(
    handler: Callable[[httpx.Request], httpx.Response], **options: Any
) -> tuple[AsyncClient, list[float]]:
    client = AsyncClient(
        "http://modelpress.test",
        "mp_test",
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
        **options,
    )
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    client._transport.sleep = sleep
    return client, sleeps


def test_retries_backoff_and_409s_as_the_synchronous_client() -> None:
    answers = rate_limited_then_unavailable_then_ok()
    client, sleeps = _mock(lambda request: answers.pop(0))
    assert asyncio.run(client.jobs.list()).items == []
    assert sleeps[0] == 3.0 and 0.75 <= sleeps[1] <= 1.0

    calls: list[httpx.Request] = []
    client, _ = _mock(lambda request: calls.append(request) or problem_answer(409, "not-ready"))
    with pytest.raises(NotReady):
        asyncio.run(client.jobs.report("job_x"))
    assert len(calls) == 1  # the state of a job: not retried
    client, _ = _mock(lambda request: problem_answer(429, "rate-limited"), max_retries=1)
    with pytest.raises(RateLimited):
        asyncio.run(client.jobs.get("job_x"))


def test_wait_rides_out_a_server_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resources, "OUTAGE_POLL", 0.01)
    polls: list[int] = []
    job = {"id": "job_x", "model_id": "mdl_x", "created_at": "2026-01-01T00:00:00Z"}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            raise httpx.ConnectError("connection refused")
        polls.append(1)
        if len(polls) <= 9:  # three polls, each retried twice, find no server
            raise httpx.ConnectError("connection refused")
        return httpx.Response(200, json={**job, "status": "succeeded" if len(polls) > 10 else "running"})

    client, _ = _mock(handler)
    done = asyncio.run(client.jobs.wait("job_x", poll_interval=0.01))
    assert done.status == "succeeded" and len(polls) == 11
