"""``AsyncClient``'s resources: the same calls as :mod:`modelpress_client.resources`, awaitable.

Request bodies, the event-stream parser, bundling, and the wait and download policies
(``Wait``, ``Download``) are shared with the synchronous resources; only the I/O differs. File
work (bundling, writing a download) runs in a thread, so that a large model does not stall the
event loop.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx
from pydantic import BaseModel

from modelpress_client._http import AsyncTransport
from modelpress_client.resources import (
    DEFAULT_POLL_INTERVAL,
    DOWNLOAD_TIMEOUT,
    EVENTS_FAILURES,
    TRANSIENT,
    Download,
    Resource,
    SseParser,
    Wait,
    _upload_timeout,
    is_event_stream,
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


class _AsyncRecords(Resource[AsyncTransport], Generic[R]):
    """The pages of one kind of record (models, datasets), awaitable."""

    _path: str
    _record: type[R]

    async def list(self, *, limit: int = 50, offset: int = 0) -> Page[R]:
        return await _page(self._t, self._path, self._record, {"limit": limit, "offset": offset})

    def iter(self) -> AsyncIterator[R]:
        return _iterate(lambda offset: self.list(limit=200, offset=offset))


class AsyncModels(_AsyncRecords[Model]):
    _path, _record = "/v1/models", Model

    async def upload(self, path: str | os.PathLike[str]) -> Model:
        """Upload an ``.onnx`` (zipped with its external-data files, if any) or a ``.zip``."""
        return Model.model_validate((await _upload(self._t, "/v1/models", path)).json())

    async def get(self, model_id: str) -> Model:
        return Model.model_validate((await self._t.request("GET", f"/v1/models/{model_id}")).json())

    async def delete(self, model_id: str) -> None:
        await self._t.request("DELETE", f"/v1/models/{model_id}")


class AsyncDatasets(_AsyncRecords[Dataset]):
    _path, _record = "/v1/datasets", Dataset

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

    async def delete(self, dataset_id: str) -> None:
        await self._t.request("DELETE", f"/v1/datasets/{dataset_id}")


async def _submit(transport: AsyncTransport, path: str, body: dict[str, Any], key: str | None) -> Job:
    headers = {"Idempotency-Key": key or unique_key()}  # reused by every retry of this submission
    return Job.model_validate((await transport.request("POST", path, json=body, headers=headers)).json())


class AsyncJobs(Resource[AsyncTransport]):
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
        download = Download(job_id, name, path, self._t.max_retries)
        while True:
            try:
                with download.file() as out:
                    async with self._t.stream("GET", download.path, timeout=DOWNLOAD_TIMEOUT) as response:
                        async for chunk in response.aiter_bytes(1 << 20):
                            await asyncio.to_thread(out.write, chunk)
                    await asyncio.to_thread(out.flush)
                    await asyncio.to_thread(os.fsync, out.fileno())
                return download.target
            except httpx.TransportError as exc:  # the body broke off: start the file again
                await self._t.sleep(download.broke_off(exc))

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
        with Wait(job_id, progress, timeout, poll_interval, on_update) as wait:
            job = await self._follow_events(wait)
            while job is None or not job.done:
                try:
                    response = await self._t.request("GET", f"/v1/jobs/{job_id}")
                except TRANSIENT as exc:
                    await asyncio.sleep(wait.unreachable(exc))
                    continue
                job, delay = wait.polled(response)
                if delay is not None:
                    await asyncio.sleep(delay)
            return job

    async def _follow_events(self, wait: Wait) -> Job | None:
        """The job in a terminal state from the event stream; None when the caller should poll."""
        while True:
            try:
                return await self._read_events(wait)
            except EVENTS_FAILURES as exc:
                if not wait.reconnects_after(exc):
                    return None

    async def _read_events(self, wait: Wait) -> Job | None:
        async with self._t.stream("GET", wait.events_path, **wait.events_options()) as response:
            if not is_event_stream(response, wait.job_id):
                return None
            parser = SseParser()
            async for line in response.aiter_lines():
                item = parser.feed(line)
                if item is None:
                    continue
                stop, job = wait.event(*item)
                if stop:
                    return job
        return None


class AsyncSweeps(Resource[AsyncTransport]):
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
