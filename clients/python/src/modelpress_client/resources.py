"""``client.models``, ``client.datasets``, ``client.jobs`` and ``client.sweeps``."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Generic, TypeVar

import httpx
from pydantic import BaseModel

from modelpress_client import errors
from modelpress_client._http import AsyncTransport, Transport, backoff, log, retry_after
from modelpress_client.bundle import NotOnnx, bundle, external_data
from modelpress_client.types import Dataset, Job, Model, Page

R = TypeVar("R", bound=BaseModel)
TransportT = TypeVar("TransportT", Transport, AsyncTransport)

DEFAULT_POLL_INTERVAL = 1.0  # seconds between GETs when the event stream is unavailable
SSE_IDLE = 60.0  # reconnect the event stream after this long without an event
MAX_OUTAGE = 900.0  # without a timeout, wait() rides out this long an unreachable server (a restart)
OUTAGE_POLL = 2.0  # seconds between tries while the server is unreachable
# what a wait rides out: the server restarting or a proxy in front of it failing for a while
TRANSIENT = (errors.APIConnectionError, errors.ServerError, errors.RateLimited)
# what makes a wait reopen the event stream or fall back to polling (see Wait.reconnects_after)
EVENTS_FAILURES = (httpx.HTTPError, ValueError, errors.APIConnectionError, errors.APIStatusError)
DOWNLOAD_TIMEOUT = httpx.Timeout(30.0, read=300.0)  # a large artifact streams for a while


def _page(transport: Transport, path: str, record: type[R], params: dict[str, Any]) -> Page[R]:
    query = {k: v for k, v in params.items() if v is not None}
    return Page[record].model_validate(transport.request("GET", path, params=query).json())  # type: ignore[valid-type]


def _iterate(fetch: Callable[[int], Page[R]]) -> Iterator[R]:
    offset: int | None = 0
    while offset is not None:
        page = fetch(offset)
        yield from page.items
        offset = page.next_offset


class Resource(Generic[TransportT]):
    """One part of the API (models, datasets, jobs, sweeps), over the client's transport."""

    def __init__(self, transport: TransportT) -> None:
        self._t: TransportT = transport


class _Records(Resource[Transport], Generic[R]):
    """The pages of one kind of record (models, datasets)."""

    _path: str
    _record: type[R]

    def list(self, *, limit: int = 50, offset: int = 0) -> Page[R]:
        return _page(self._t, self._path, self._record, {"limit": limit, "offset": offset})

    def iter(self) -> Iterator[R]:
        """Every record in the account, page by page."""
        return _iterate(lambda offset: self.list(limit=200, offset=offset))


class Models(_Records[Model]):
    _path, _record = "/v1/models", Model

    def upload(self, path: str | os.PathLike[str]) -> Model:
        """Upload an ``.onnx`` file, or a ``.zip`` of one ``.onnx`` and its external data.

        An ``.onnx`` whose weights live in external-data files (what ``torch.onnx.export(...,
        dynamo=True)`` writes: ``model.onnx`` + ``model.onnx.data``) is zipped with them first.
        """
        with upload_source(path) as source:
            upload = ("file", source)
            response = self._t.request("POST", "/v1/models", upload=upload, timeout=_upload_timeout())
        return Model.model_validate(response.json())

    def get(self, model_id: str) -> Model:
        return Model.model_validate(self._t.request("GET", f"/v1/models/{model_id}").json())

    def delete(self, model_id: str) -> None:
        """Delete the model and its files; ``InUse`` while jobs name it (delete those first)."""
        self._t.request("DELETE", f"/v1/models/{model_id}")


class Datasets(_Records[Dataset]):
    _path, _record = "/v1/datasets", Dataset

    def upload(self, path: str | os.PathLike[str]) -> Dataset:
        """Upload an ``.npz`` with ``x`` (and optionally ``y``, ``x_val``, ``y_val``)."""
        source = Path(path)
        if not source.is_file():
            raise FileNotFoundError(f"no dataset file at {source}")
        response = self._t.request("POST", "/v1/datasets", upload=("file", source), timeout=_upload_timeout())
        return Dataset.model_validate(response.json())

    def builtin(self, name: str = "digits") -> Dataset:
        """A dataset the server ships with (``digits``: scikit-learn's 8×8 handwritten digits)."""
        return Dataset.model_validate(self._t.request("POST", "/v1/datasets", json={"builtin": name}).json())

    def get(self, dataset_id: str) -> Dataset:
        return Dataset.model_validate(self._t.request("GET", f"/v1/datasets/{dataset_id}").json())

    def delete(self, dataset_id: str) -> None:
        """Delete the dataset and its file; ``InUse`` while jobs name it (delete those first)."""
        self._t.request("DELETE", f"/v1/datasets/{dataset_id}")


def external_data_of(path: str | os.PathLike[str]) -> list[str]:
    """The external-data files an ``.onnx`` names (empty for a .zip, or what does not parse)."""
    source = Path(path)
    if source.suffix.lower() != ".onnx":
        return []
    try:
        return external_data(source)
    except NotOnnx:
        return []  # the server says what is wrong with it


def prepare_upload(path: str | os.PathLike[str], tmp: Path) -> Path:
    """The file to upload for ``path``: itself, or a zip in ``tmp`` of it and its external data."""
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"no model file at {source}")
    if not external_data_of(source):
        return source
    return bundle(source, tmp / f"{source.stem}.zip")


@contextlib.contextmanager
def upload_source(path: str | os.PathLike[str]) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="modelpress-bundle-") as tmp:
        yield prepare_upload(path, Path(tmp))


def job_body(
    method: str,
    *,
    model_id: str | None = None,
    dataset_id: str | None = None,
    rank: Mapping[str, float | str] | None = None,
    training: Mapping[str, Any] | None = None,
    evaluation: Mapping[str, Any] | None = None,
    quantize: str | None = None,
) -> dict[str, Any]:
    """The JSON of a job spec (with the model and dataset when given); omitted parts keep the
    server's per-method defaults."""
    body: dict[str, Any] = {"method": method}
    if model_id is not None:
        body["model_id"] = model_id
    if dataset_id is not None:
        body["dataset_id"] = dataset_id
    for key, value in (("rank", rank), ("training", training), ("evaluation", evaluation)):
        if value is not None:
            body[key] = dict(value)
    if quantize is not None:
        body["quantize"] = quantize
    return body


def _upload_timeout() -> httpx.Timeout:
    # the server validates a model before answering; a large one takes a while
    return httpx.Timeout(30.0, read=600.0, write=600.0)


def unique_key() -> str:
    """An Idempotency-Key: one per submission, reused by every retry of it (see _http)."""
    return f"mpc-{uuid.uuid4().hex}"


def sweep_body(
    model_id: str,
    dataset_id: str,
    methods: Sequence[str],
    targets: Sequence[float] | None,
    strengths: Mapping[str, Sequence[float]] | None,
    seeds: Sequence[int] | None,
    training: Mapping[str, Any] | None,
    latency: bool,
) -> dict[str, Any]:
    body: dict[str, Any] = {"model_id": model_id, "dataset_id": dataset_id, "methods": list(methods)}
    if targets is not None:
        body["targets"] = list(targets)
    if strengths is not None:
        body["strengths"] = {k: list(v) for k, v in strengths.items()}
    if seeds is not None:
        body["seeds"] = list(seeds)
    if training is not None:
        body["training"] = dict(training)
    body["latency"] = latency
    return body


def _submit(transport: Transport, path: str, body: dict[str, Any], key: str | None) -> Job:
    headers = {"Idempotency-Key": key or unique_key()}
    return Job.model_validate(transport.request("POST", path, json=body, headers=headers).json())


class Jobs(Resource[Transport]):
    def create(
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
        """Submit a compression job; returns it queued.

        ``rank`` is one of ``{"energy": e}``, ``{"target_macs": r}``, ``{"target_params": r}``,
        ``{"max_drop": d}`` (the largest reduction within a top-1 drop of d), optionally with
        ``"weighting": "activations" | "none"``; ``training`` and ``evaluation`` take the keys of
        the job spec (``epochs``, ``strength``, ``finetune_epochs``, ... / ``latency``,
        ``threads``, ``batches``); ``quantize`` is ``"none"``, ``"dynamic"`` or ``"static"``
        (INT8 on top). Omitted parts keep the server's per-method defaults.
        """
        parts = {"rank": rank, "training": training, "evaluation": evaluation}
        body = job_body(method, model_id=model_id, dataset_id=dataset_id, quantize=quantize, **parts)
        return _submit(self._t, "/v1/jobs", body, idempotency_key)

    def validate(
        self,
        method: str,
        *,
        rank: Mapping[str, float | str] | None = None,
        training: Mapping[str, Any] | None = None,
        evaluation: Mapping[str, Any] | None = None,
        quantize: str | None = None,
    ) -> dict[str, Any]:
        """Check a spec with the server before uploading anything; returns it with every default
        filled in, or raises :class:`~modelpress_client.errors.InvalidRequest` naming each bad field."""
        body = job_body(method, rank=rank, training=training, evaluation=evaluation, quantize=quantize)
        spec: dict[str, Any] = self._t.request("POST", "/v1/jobs/validate", json=body).json()
        return spec

    def get(self, job_id: str) -> Job:
        return Job.model_validate(self._t.request("GET", f"/v1/jobs/{job_id}").json())

    def list(self, *, status: str | None = None, limit: int = 50, offset: int = 0) -> Page[Job]:
        """Newest first; ``status`` filters (queued, running, succeeded, failed, cancelled)."""
        return _page(self._t, "/v1/jobs", Job, {"status": status, "limit": limit, "offset": offset})

    def iter(self, *, status: str | None = None) -> Iterator[Job]:
        return _iterate(lambda offset: self.list(status=status, limit=200, offset=offset))

    def cancel(self, job_id: str) -> Job:
        """Ask the job to stop: a queued one is cancelled at once, a running one before its next step."""
        return Job.model_validate(self._t.request("POST", f"/v1/jobs/{job_id}/cancel").json())

    def delete(self, job_id: str) -> None:
        """Delete a finished job (or sweep) and its artifacts; ``ConflictError`` while it is
        queued or running (cancel it first)."""
        self._t.request("DELETE", f"/v1/jobs/{job_id}")

    def report(self, job_id: str) -> dict[str, Any]:
        """The report of a succeeded job (``before``, ``after``, ``ratios``, ``layers``, ...)."""
        report: dict[str, Any] = self._t.request("GET", f"/v1/jobs/{job_id}/report").json()
        return report

    def download(
        self,
        job_id: str,
        name: str = "model.onnx",
        path: str | os.PathLike[str] | None = None,
    ) -> Path:
        """Write artifact ``name`` (model.onnx, report.json, curve.csv, curve.png) to ``path``.

        ``path`` defaults to ``./name``; a folder gets ``name`` inside it. The file appears
        whole or not at all: it is written to a temporary file beside it and renamed.
        """
        download = Download(job_id, name, path, self._t.max_retries)
        while True:
            try:
                with (
                    download.file() as out,
                    self._t.stream("GET", download.path, timeout=DOWNLOAD_TIMEOUT) as response,
                ):
                    for chunk in response.iter_bytes(1 << 20):
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                return download.target
            except httpx.TransportError as exc:  # the body broke off: start the file again
                self._t.sleep(download.broke_off(exc))

    def wait(
        self,
        job_id: str,
        *,
        progress: bool = False,
        timeout: float | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        on_update: Callable[[Job], None] | None = None,
    ) -> Job:
        """Block until the job succeeds, fails or is cancelled, and return it in that state.

        Follows the server's event stream; if the stream is unavailable it polls the job every
        ``poll_interval`` seconds (or as the server's ``Retry-After`` says). A server that goes
        away (a restart, a lost connection, 5xx from a proxy) is waited for until ``timeout``, or
        for :data:`MAX_OUTAGE` seconds without one. ``progress=True`` draws a progress bar on
        stderr; ``on_update`` sees every new state. Raises
        :class:`~modelpress_client.errors.WaitTimeout` after ``timeout`` seconds.
        """
        with Wait(job_id, progress, timeout, poll_interval, on_update) as wait:
            job = self._follow_events(wait)
            while job is None or not job.done:
                try:
                    response = self._t.request("GET", f"/v1/jobs/{job_id}")
                except TRANSIENT as exc:  # the server restarts, or is briefly unreachable
                    time.sleep(wait.unreachable(exc))
                    continue
                job, delay = wait.polled(response)
                if delay is not None:
                    time.sleep(delay)
            return job

    def _follow_events(self, wait: Wait) -> Job | None:
        """The job in a terminal state, read from the event stream; None if the stream failed
        (the caller then polls). 401/404 and other refusals are raised, not papered over."""
        while True:
            try:
                with self._t.stream("GET", wait.events_path, **wait.events_options()) as response:
                    if not is_event_stream(response, wait.job_id):
                        return None
                    for event, data in _sse(response.iter_lines()):
                        stop, job = wait.event(event, data)
                        if stop:
                            return job
                return None  # the stream closed early: poll for the rest
            except EVENTS_FAILURES as exc:
                if not wait.reconnects_after(exc):
                    return None


class Watcher:
    """What a wait shows: each new state of the job once, to a progress bar and a callback."""

    def __init__(self, job_id: str, progress: bool, on_update: Callable[[Job], None] | None) -> None:
        self.bar = _ProgressBar(job_id) if progress else None
        self.on_update = on_update
        self.last: Job | None = None

    def seen(self, job: Job) -> None:
        if self.last == job:
            return  # the end event repeats the last progress event; so does a reconnect
        self.last = job
        if self.bar is not None:
            self.bar.update(job)
        if self.on_update is not None:
            self.on_update(job)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Outage:
    """How long the server has been unreachable during a wait, and whether to keep waiting."""

    def __init__(self, job_id: str, deadline: float | None, limit: float = MAX_OUTAGE) -> None:
        self.job_id, self.deadline, self.limit = job_id, deadline, limit
        self.since: float | None = None

    def failed(self, exc: errors.APIError) -> float:
        """Seconds to sleep before the next try; raises ``exc`` when out of time."""
        now = time.monotonic()
        self.since = now if self.since is None else self.since
        give_up = self.deadline if self.deadline is not None else self.since + self.limit
        if now >= give_up:
            raise exc
        log.debug("waiting for %s: %s; trying again (down for %.0f s)", self.job_id, exc, now - self.since)
        return min(OUTAGE_POLL, give_up - now)

    def recovered(self) -> None:
        self.since = None


class Wait:
    """One ``jobs.wait`` apart from its requests and sleeps, which the sync and async clients
    do: when it gives up, what it has shown, how long the server has been away, and what each
    event or poll means for it."""

    def __init__(
        self,
        job_id: str,
        progress: bool,
        timeout: float | None,
        poll_interval: float,
        on_update: Callable[[Job], None] | None,
    ) -> None:
        self.job_id, self.timeout, self.poll_interval = job_id, timeout, poll_interval
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.events_path = f"/v1/jobs/{job_id}/events"
        self.watcher = Watcher(job_id, progress, on_update)
        self.outage = Outage(job_id, self.deadline)

    def __enter__(self) -> Wait:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.watcher.close()

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def events_options(self) -> dict[str, Any]:
        """How to open the event stream: not retried (polling is the fallback), and reopened
        after a silence of :data:`SSE_IDLE` seconds or what is left of the timeout."""
        left = float("inf") if self.deadline is None else self.deadline - time.monotonic()
        idle = max(0.01, min(SSE_IDLE, left))
        headers = {"Accept": "text/event-stream"}
        return {"headers": headers, "timeout": httpx.Timeout(30.0, read=idle), "max_retries": 0}

    def event(self, event: str, data: str) -> tuple[bool, Job | None]:
        """What one event of the stream means: ``(True, job)`` when the job ended, ``(True,
        None)`` when time ran out (one last look by polling, then WaitTimeout), ``(False, None)``
        to read on."""
        if event not in ("progress", "end"):
            return False, None
        job = Job.model_validate(json.loads(data))
        self.watcher.seen(job)
        if event == "end" or job.done:
            return True, job
        return self.out_of_time(), None

    def reconnects_after(self, exc: Exception) -> bool:
        """After the event stream failed with ``exc`` (one of :data:`EVENTS_FAILURES`): True to
        open it again, False to poll instead. A refusal (401, 403, 404) is raised."""
        if isinstance(exc, httpx.ReadTimeout):  # a quiet stretch (a long epoch): the server resends the state
            return not self.out_of_time()
        if isinstance(exc, errors.APIStatusError) and not isinstance(exc, errors.ServerError):
            if exc.status in (401, 403, 404):
                raise exc
            log.debug("events of %s answered %s; polling instead", self.job_id, exc.status)
            return False
        log.debug("events of %s failed (%r); polling instead", self.job_id, exc)
        return False

    def unreachable(self, exc: errors.APIError) -> float:
        """Seconds to sleep before polling again; raises ``exc`` when out of time."""
        return self.outage.failed(exc)

    def polled(self, response: httpx.Response) -> tuple[Job, float | None]:
        """The job a poll answered, and seconds until the next poll (None when the job is done:
        every terminal state ends the wait). Raises WaitTimeout when out of time."""
        job = Job.model_validate(response.json())
        self.outage.recovered()
        self.watcher.seen(job)
        if job.done:
            return job, None
        remaining = float("inf") if self.deadline is None else self.deadline - time.monotonic()
        if remaining <= 0:
            raise errors.WaitTimeout(self.job_id, self.timeout or 0.0, job.status)
        hint = retry_after(response)
        return job, min(self.poll_interval if hint is None else hint, remaining)


def is_event_stream(response: httpx.Response, job_id: str) -> bool:
    """Whether the events request got a stream (a proxy may answer otherwise: then poll)."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        return True
    log.debug("events of %s: not an event stream; polling instead", job_id)
    return False


class Download:
    """One ``jobs.download`` apart from its requests and sleeps: where the file goes, writing it
    whole or not at all, and whether to start again when the body breaks off."""

    def __init__(self, job_id: str, name: str, path: str | os.PathLike[str] | None, limit: int) -> None:
        target = Path(path) if path is not None else Path(name)
        self.target = target / name if target.is_dir() else target
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.job_id, self.name, self.limit, self.retry = job_id, name, limit, 0
        self.path = f"/v1/jobs/{job_id}/artifacts/{name}"

    @contextlib.contextmanager
    def file(self) -> Iterator[BinaryIO]:
        """A temporary file beside the target that replaces it when the block succeeds and is
        removed otherwise, so that the target appears whole or not at all."""
        target = self.target
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                yield out
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def broke_off(self, exc: httpx.TransportError) -> float:
        """Seconds to wait before starting the file again; raises when retries are spent."""
        if self.retry >= self.limit:
            raise errors.APIConnectionError(
                None, f"the download of {self.name} from {self.job_id} broke off ({exc}); try again."
            ) from exc
        self.retry += 1
        return backoff(self.retry - 1)


class SseParser:
    """(event, data) pairs of a text/event-stream, fed line by line (the subset the server
    sends, plus comments)."""

    def __init__(self) -> None:
        self.event, self.data = "message", list[str]()

    def feed(self, line: str) -> tuple[str, str] | None:
        if not line:
            event, data = self.event, self.data
            self.event, self.data = "message", []
            return (event, "\n".join(data)) if data else None
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            self.event = value
        elif field == "data":
            self.data.append(value)
        return None

    def end(self) -> tuple[str, str] | None:
        return self.feed("")


def _sse(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    parser = SseParser()
    for line in lines:
        item = parser.feed(line)
        if item is not None:
            yield item
    last = parser.end()
    if last is not None:
        yield last


class Sweeps(Resource[Transport]):
    def create(
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
        """Submit a sweep (methods × targets, or a strength grid per method); its result is a
        curve report (``jobs.report``) with curve.csv and curve.png artifacts."""
        body = sweep_body(model_id, dataset_id, methods, targets, strengths, seeds, training, latency)
        return _submit(self._t, "/v1/sweeps", body, idempotency_key)

    def get(self, sweep_id: str) -> Job:
        return Job.model_validate(self._t.request("GET", f"/v1/sweeps/{sweep_id}").json())


class _ProgressBar:
    """A rich progress bar on stderr: stage, percentage, epoch, the server's ETA."""

    def __init__(self, job_id: str) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description:<14}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._task = self._progress.add_task("queued", total=1.0, detail=job_id)
        self._progress.start()

    def update(self, job: Job) -> None:
        p = job.progress
        parts = [f"epoch {p.epoch}"] if p.epoch is not None else []
        if p.eta_s is not None and not job.done:
            parts.append(f"eta {p.eta_s:.0f}s")
        parts.extend(f"{k} {v:.4g}" for k, v in list(p.metrics.items())[:2])
        fraction = 1.0 if job.status == "succeeded" else (p.fraction or 0.0)
        description = job.status if job.done else (p.stage or job.status)
        self._progress.update(self._task, completed=fraction, description=description, detail=" ".join(parts))

    def close(self) -> None:
        self._progress.stop()
