"""``AsyncClient``'s resources: the same calls as :mod:`modelpress_client.resources`, awaitable.

Request bodies, the event-stream parser, bundling and the wait policy are shared with the
synchronous resources; only the I/O differs. File work (bundling, writing a download) runs in a
thread, so that a large model does not stall the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from modelpress_client import errors
from modelpress_client._http import AsyncTransport, backoff, log, retry_after
from modelpress_client.resources import (
    DEFAULT_POLL_INTERVAL,
    TRANSIENT,
    Outage,
    SseParser,
    Watcher,
    _upload_timeout,
    event_job,
    events_idle,
    job_body,
    prepare_upload,
    sweep_body,
    unique_key,
)
from modelpress_client.types import Dataset, Job, Model, Page

R = TypeVar("R", bound=BaseModel)


async def _page(transport: AsyncTransport, path: str, record: type[R], params: dict[str, Any]) -> Page[R]:
    query = {k: v for k, v in params.items() if v is not None}
    response = await transport.request("GET", path, params=query)
    return Page[record].model_validate(response.json())  # type: ignore[valid-type]


async def _iterate(fetch: Callable[[int], Any]) -> AsyncIterator[Any]:
    offset: int | None = 0
    while offset is not None:
        page = await fetch(offset)
        for item in page.items:
            yield item
        offset = page.next_offset


async def _upload(transport: AsyncTransport, path: str, source: str | os.PathLike[str]) -> httpx.Response:
    with tempfile.TemporaryDirectory(prefix="modelpress-bundle-") as tmp:
        prepared = await asyncio.to_thread(prepare_upload, source, Path(tmp))
        return await transport.request("POST", path, upload=("file", prepared), timeout=_upload_timeout())


class AsyncModels:
    def __init__(self, transport: AsyncTransport) -> None:
        self._t = transport

    async def upload(self, path: str | os.PathLike[str]) -> Model:
        """Upload an ``.onnx`` (zipped with its external-data files, if any) or a ``.zip``."""
        return Model.model_validate((await _upload(self._t, "/v1/models", path)).json())

    async def get(self, model_id: str) -> Model:
        return Model.model_validate((await self._t.request("GET", f"/v1/models/{model_id}")).json())

    async def list(self, *, limit: int = 50, offset: int = 0) -> Page[Model]:
        return await _page(self._t, "/v1/models", Model, {"limit": limit, "offset": offset})

    def iter(self) -> AsyncIterator[Model]:
        return _iterate(lambda offset: self.list(limit=200, offset=offset))

    async def delete(self, model_id: str) -> None:
        await self._t.request("DELETE", f"/v1/models/{model_id}")


class AsyncDatasets:
    def __init__(self, transport: AsyncTransport) -> None:
        self._t = transport

    async def upload(self, path: str | os.PathLike[str]) -> Dataset:
        source = Path(path)
        if not source.is_file():
            raise FileNotFoundError(f"no dataset file at {source}")
        return Dataset.model_validate((await _upload(self._t, "/v1/datasets", source)).json())

    async def builtin(self, name: str = "digits") -> Dataset:
        response = await self._t.request("POST", "/v1/datasets", json={"builtin": name})
        return Dataset.model_validate(response.json())

    async def get(self, dataset_id: str) -> Dataset:
        return Dataset.model_validate((await self._t.request("GET", f"/v1/datasets/{dataset_id}")).json())

    async def list(self, *, limit: int = 50, offset: int = 0) -> Page[Dataset]:
        return await _page(self._t, "/v1/datasets", Dataset, {"limit": limit, "offset": offset})

    async def delete(self, dataset_id: str) -> None:
        await self._t.request("DELETE", f"/v1/datasets/{dataset_id}")

    def iter(self) -> AsyncIterator[Dataset]:
        return _iterate(lambda offset: self.list(limit=200, offset=offset))


async def _submit(transport: AsyncTransport, path: str, body: dict[str, Any], key: str | None) -> Job:
    headers = {"Idempotency-Key": key or unique_key()}  # reused by every retry of this submission
    return Job.model_validate((await transport.request("POST", path, json=body, headers=headers)).json())


class AsyncJobs:
    def __init__(self, transport: AsyncTransport) -> None:
        self._t = transport

    async def create(
        self,
        model_id: str,
        method: str,
        dataset_id: str | None = None,
        *,
        rank: Mapping[str, float | str] | None = None,
        training: Mapping[str, Any] | None = None,
        evaluation: Mapping[str, Any] | None = None,
        quantize: str | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        parts = {"rank": rank, "training": training, "evaluation": evaluation}
        body = job_body(method, model_id=model_id, dataset_id=dataset_id, quantize=quantize, **parts)
        return await _submit(self._t, "/v1/jobs", body, idempotency_key)

    async def validate(
        self,
        method: str,
        *,
        rank: Mapping[str, float] | None = None,
        training: Mapping[str, Any] | None = None,
        evaluation: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        body = job_body(method, rank=rank, training=training, evaluation=evaluation)
        spec: dict[str, Any] = (await self._t.request("POST", "/v1/jobs/validate", json=body)).json()
        return spec

    async def get(self, job_id: str) -> Job:
        return Job.model_validate((await self._t.request("GET", f"/v1/jobs/{job_id}")).json())

    async def list(self, *, status: str | None = None, limit: int = 50, offset: int = 0) -> Page[Job]:
        return await _page(self._t, "/v1/jobs", Job, {"status": status, "limit": limit, "offset": offset})

    def iter(self, *, status: str | None = None) -> AsyncIterator[Job]:
        return _iterate(lambda offset: self.list(status=status, limit=200, offset=offset))

    async def cancel(self, job_id: str) -> Job:
        return Job.model_validate((await self._t.request("POST", f"/v1/jobs/{job_id}/cancel")).json())

    async def delete(self, job_id: str) -> None:
        await self._t.request("DELETE", f"/v1/jobs/{job_id}")

    async def report(self, job_id: str) -> dict[str, Any]:
        report: dict[str, Any] = (await self._t.request("GET", f"/v1/jobs/{job_id}/report")).json()
        return report

    async def download(
        self, job_id: str, name: str = "model.onnx", path: str | os.PathLike[str] | None = None
    ) -> Path:
        """Write artifact ``name`` to ``path`` (default ``./name``), whole or not at all."""
        target = Path(path) if path is not None else Path(name)
        if target.is_dir():
            target = target / name
        target.parent.mkdir(parents=True, exist_ok=True)
        retry = 0
        while True:
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
            try:
                await self._download_to(fd, job_id, name)
                os.replace(tmp, target)
                return target
            except httpx.TransportError as exc:  # the body broke off: start the file again
                _unlink(tmp)
                if retry >= self._t.max_retries:
                    raise errors.APIConnectionError(
                        None, f"the download of {name} from {job_id} broke off ({exc}); try again."
                    ) from exc
                await self._t.sleep(backoff(retry))
                retry += 1
            except BaseException:
                _unlink(tmp)
                raise

    async def _download_to(self, fd: int, job_id: str, name: str) -> None:
        timeout = httpx.Timeout(30.0, read=300.0)
        with os.fdopen(fd, "wb") as out:
            async with self._t.stream(
                "GET", f"/v1/jobs/{job_id}/artifacts/{name}", timeout=timeout
            ) as response:
                async for chunk in response.aiter_bytes(1 << 20):
                    await asyncio.to_thread(out.write, chunk)
            await asyncio.to_thread(out.flush)
            await asyncio.to_thread(os.fsync, out.fileno())

    async def wait(
        self,
        job_id: str,
        *,
        progress: bool = False,
        timeout: float | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        on_update: Callable[[Job], None] | None = None,
    ) -> Job:
        """As :meth:`modelpress_client.resources.Jobs.wait`: events, else polling; rides out a
        server restart until ``timeout``; every terminal state ends it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        watcher, outage = Watcher(job_id, progress, on_update), Outage(job_id, deadline)
        try:
            job = await self._follow_events(job_id, deadline, watcher.seen)
            while job is None or not job.done:
                try:
                    response = await self._t.request("GET", f"/v1/jobs/{job_id}")
                except TRANSIENT as exc:
                    await asyncio.sleep(outage.failed(exc))
                    continue
                outage.recovered()
                job, hint = Job.model_validate(response.json()), retry_after(response)
                watcher.seen(job)
                if job.done:
                    break
                remaining = float("inf") if deadline is None else deadline - time.monotonic()
                if remaining <= 0:
                    raise errors.WaitTimeout(job_id, timeout or 0.0, job.status)
                await asyncio.sleep(min(poll_interval if hint is None else hint, remaining))
            return job
        finally:
            watcher.close()

    async def _follow_events(
        self, job_id: str, deadline: float | None, seen: Callable[[Job], None]
    ) -> Job | None:
        """The job in a terminal state from the event stream; None when the caller should poll."""
        while True:
            try:
                return await self._read_events(job_id, deadline, seen)
            except httpx.ReadTimeout:
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                continue  # a quiet stretch: reconnect, the server resends the state
            except (errors.APIConnectionError, errors.ServerError, httpx.HTTPError, ValueError) as exc:
                log.debug("events of %s failed (%r); polling instead", job_id, exc)
                return None
            except errors.APIStatusError as exc:
                if exc.status in (401, 403, 404):
                    raise
                return None

    async def _read_events(
        self, job_id: str, deadline: float | None, seen: Callable[[Job], None]
    ) -> Job | None:
        timeout = httpx.Timeout(30.0, read=events_idle(deadline))
        headers = {"Accept": "text/event-stream"}
        path = f"/v1/jobs/{job_id}/events"
        async with self._t.stream("GET", path, headers=headers, timeout=timeout, max_retries=0) as response:
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                return None
            parser = SseParser()
            async for line in response.aiter_lines():
                item = parser.feed(line)
                job = None if item is None else event_job(*item)
                if job is None:
                    continue
                seen(job)
                if item is not None and (item[0] == "end" or job.done):
                    return job
                if deadline is not None and time.monotonic() >= deadline:
                    return None
        return None


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


class AsyncSweeps:
    def __init__(self, transport: AsyncTransport) -> None:
        self._t = transport

    async def create(
        self,
        model_id: str,
        dataset_id: str,
        methods: Sequence[str],
        *,
        targets: Sequence[float] | None = None,
        strengths: Mapping[str, Sequence[float]] | None = None,
        seeds: Sequence[int] | None = None,
        training: Mapping[str, Any] | None = None,
        latency: bool = False,
        idempotency_key: str | None = None,
    ) -> Job:
        body = sweep_body(model_id, dataset_id, methods, targets, strengths, seeds, training, latency)
        return await _submit(self._t, "/v1/sweeps", body, idempotency_key)

    async def get(self, sweep_id: str) -> Job:
        return Job.model_validate((await self._t.request("GET", f"/v1/sweeps/{sweep_id}")).json())
