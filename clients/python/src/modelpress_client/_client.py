"""``Client``: the entry point of the SDK."""

from __future__ import annotations

import os
from types import TracebackType
from typing import Generic, TypeVar

import httpx

from modelpress_client import errors
from modelpress_client._async import AsyncDatasets, AsyncJobs, AsyncModels, AsyncSweeps
from modelpress_client._http import AsyncTransport, Transport, configure_logging
from modelpress_client._version import __version__
from modelpress_client.resources import Datasets, Jobs, Models, Sweeps

DEFAULT_URL = "http://127.0.0.1:8000"  # where `modelpress serve` listens by default
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
DEFAULT_MAX_RETRIES = 2


def _settings(url: str | None, token: str | None, max_retries: int) -> tuple[str, dict[str, str]]:
    """The base URL and the headers every request carries, from the arguments or the environment."""
    configure_logging()
    url = (url or os.environ.get("MODELPRESS_URL") or DEFAULT_URL).rstrip("/")
    token = token or os.environ.get("MODELPRESS_TOKEN")
    if not token:
        raise errors.ConfigurationError(
            "no API token: pass token= or set MODELPRESS_TOKEN (create one with `modelpress create-key`)."
        )
    if max_retries < 0:
        raise ValueError("max_retries must be 0 or more")
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json",
        "User-Agent": f"modelpress-client/{__version__}",
    }
    return url, headers


HttpT = TypeVar("HttpT", httpx.Client, httpx.AsyncClient)


class _Connection(Generic[HttpT]):
    """What :class:`Client` and :class:`AsyncClient` share: the settings, from the arguments or
    the environment, and the httpx client that carries them."""

    _http_class: type[HttpT]

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        http_client: HttpT | None = None,
    ) -> None:
        self.url, headers = _settings(url, token, max_retries)
        self.max_retries = max_retries
        if http_client is None:
            http_client = self._http_class(base_url=self.url, headers=headers, timeout=timeout)
        else:  # e.g. a custom transport or proxy; our headers and base URL still apply
            http_client.base_url = httpx.URL(self.url)
            http_client.headers.update(headers)
        self._http: HttpT = http_client
        self._mount(http_client)

    def _mount(self, http: HttpT) -> None:
        """Set up the transport and the resources (``models``, ``datasets``, ``jobs``, ``sweeps``)."""
        raise NotImplementedError


class Client(_Connection[httpx.Client]):
    """A connection to a modelpress server.

    ``url`` and ``token`` default to ``MODELPRESS_URL`` and ``MODELPRESS_TOKEN``. Failed
    requests are retried ``max_retries`` times (connection errors, timeouts, 408/409/429/5xx)
    with jittered exponential backoff, honouring ``Retry-After``. Set ``MODELPRESS_LOG=debug``
    to log every request to stderr.

    Example::

        with Client() as client:
            model = client.models.upload("model.onnx")
            job = client.jobs.create(model.id, "svd", rank={"target_macs": 0.5})
            job = client.jobs.wait(job.id, progress=True)
    """

    _http_class = httpx.Client

    def _mount(self, http: httpx.Client) -> None:
        self._transport = Transport(http, self.max_retries)
        self.models, self.datasets = Models(self._transport), Datasets(self._transport)
        self.jobs, self.sweeps = Jobs(self._transport), Sweeps(self._transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(url={self.url!r})"


class AsyncClient(_Connection[httpx.AsyncClient]):
    """:class:`Client` for an event loop: the same resources, each call awaitable.

    Example::

        async with AsyncClient() as client:
            model = await client.models.upload("model.onnx")
            job = await client.jobs.create(model.id, "svd", rank={"target_macs": 0.5})
            job = await client.jobs.wait(job.id)
            report = await client.jobs.report(job.id)
    """

    _http_class = httpx.AsyncClient

    def _mount(self, http: httpx.AsyncClient) -> None:
        self._transport = AsyncTransport(http, self.max_retries)
        self.models, self.datasets = AsyncModels(self._transport), AsyncDatasets(self._transport)
        self.jobs, self.sweeps = AsyncJobs(self._transport), AsyncSweeps(self._transport)

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncClient(url={self.url!r})"
