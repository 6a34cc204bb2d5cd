"""Sending one logical request: retries with jittered backoff, ``Retry-After``, typed errors.

A request is retried on connection errors, timeouts and 408/409/429/5xx answers, except a 409
that states a job's state (``not-ready``, ``job-finished``): asking again changes nothing. Callers that
create something (jobs, sweeps) pass an ``Idempotency-Key`` header, which every retry reuses, so
a retry after a lost answer returns the first job instead of making a second one.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from modelpress_client import errors

log = logging.getLogger("modelpress_client")

RETRY_STATUSES = frozenset({408, 409, 429})
# 409s that describe a state, not a race: the same request gets the same answer until the job moves
STATE_CONFLICTS = frozenset({"not-ready", "job-finished", "conflict", "in-use"})
INITIAL_DELAY = 0.5  # seconds before the first retry; doubles each time
MAX_DELAY = 8.0
MAX_RETRY_AFTER = 60.0  # a longer server hint is ignored in favour of our own backoff


def configure_logging() -> None:
    """Log each request to stderr, only when the environment says ``MODELPRESS_LOG=debug``."""
    if os.environ.get("MODELPRESS_LOG", "").strip().lower() != "debug":
        return
    if not any(getattr(h, "_modelpress", False) for h in log.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s %(name)s %(levelname)s] %(message)s"))
        handler._modelpress = True  # type: ignore[attr-defined]
        log.addHandler(handler)
    log.setLevel(logging.DEBUG)


def retry_after(response: httpx.Response) -> float | None:
    """Seconds the server asked us to wait (``Retry-After``: seconds or an HTTP date), if usable."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return seconds if 0 <= seconds <= MAX_RETRY_AFTER else None


def backoff(retry: int) -> float:
    """Exponential backoff with jitter: up to 25 % shorter, so clients do not retry in lockstep."""
    return min(INITIAL_DELAY * 2.0**retry, MAX_DELAY) * (1 - 0.25 * random.random())


def should_retry(response: httpx.Response) -> bool:
    """Whether another try may get another answer (a 409's body must have been read)."""
    if response.status_code == 409:
        return errors.error_for(response).kind not in STATE_CONFLICTS
    return response.status_code in RETRY_STATUSES or response.status_code >= 500


@dataclass(frozen=True)
class Call:
    """One logical request, as sent on every attempt."""

    method: str
    path: str
    json: Any = None
    params: dict[str, Any] | None = None
    headers: dict[str, str] | None = None
    upload: tuple[str, Path] | None = None  # (form field, file): reopened per attempt
    timeout: float | httpx.Timeout | None = None

    @contextmanager
    def build(self, http: httpx.Client | httpx.AsyncClient) -> Iterator[httpx.Request]:
        extra: dict[str, Any] = {} if self.timeout is None else {"timeout": self.timeout}
        if self.upload is None:
            yield http.build_request(
                self.method, self.path, json=self.json, params=self.params, headers=self.headers, **extra
            )
            return
        field, source = self.upload
        with source.open("rb") as file:  # a retry must send the whole file again
            files = {field: (source.name, file, "application/octet-stream")}
            yield http.build_request(
                self.method, self.path, params=self.params, headers=self.headers, files=files, **extra
            )


class Attempts:
    """The attempts of one call: each one's request, and after it whether and when to try again."""

    def __init__(self, call: Call, limit: int) -> None:
        self.call, self.limit, self.retry = call, limit, 0
        self.request: httpx.Request | None = None
        self.started = 0.0

    @contextmanager
    def build(self, http: httpx.Client | httpx.AsyncClient) -> Iterator[httpx.Request]:
        """The request of the next attempt, timed from here."""
        self.request = None
        with self.call.build(http) as request:
            self.request, self.started = request, time.monotonic()
            yield request

    def failed(self, exc: httpx.TransportError) -> float:
        """Seconds to wait after a connection error or timeout; raises it when retries are spent."""
        log.debug("%s %s failed: %r", self.call.method, self.call.path, exc)
        if self.retry >= self.limit:
            if isinstance(exc, httpx.TimeoutException):
                raise errors.APITimeoutError(self.request) from exc
            raise errors.APIConnectionError(self.request) from exc
        return self._next(backoff(self.retry))

    def answered(self, response: httpx.Response) -> float | None:
        """None when ``response`` is the answer; else seconds to wait before asking again. Raises
        the typed error when the answer is final."""
        log.debug(
            "%s %s -> %s in %.0f ms (request id %s)",
            self.call.method,
            response.request.url,
            response.status_code,
            (time.monotonic() - self.started) * 1e3,
            response.headers.get("x-request-id"),
        )
        if response.status_code < 400:
            return None
        if self.retry >= self.limit or not should_retry(response):
            raise errors.error_for(response)
        delay = retry_after(response)
        return self._next(backoff(self.retry) if delay is None else delay)

    def _next(self, delay: float) -> float:
        self.retry += 1
        method, path = self.call.method, self.call.path
        log.debug("retrying %s %s in %.2f s (%d of %d)", method, path, delay, self.retry, self.limit)
        return delay


class Transport:
    """Wraps an ``httpx.Client`` and turns requests into responses or typed errors."""

    def __init__(self, http: httpx.Client, max_retries: int, sleep: Callable[[float], None] = time.sleep):
        self.http = http
        self.max_retries = max_retries
        self.sleep = sleep

    def request(self, method: str, path: str, **options: Any) -> httpx.Response:
        """The response (body read) of a request that succeeded, after retries; else an error.
        ``options``: json, params, headers, upload (field, path), timeout."""
        return self._send(Call(method, path, **options), self.max_retries, read=True)

    @contextmanager
    def stream(
        self, method: str, path: str, *, max_retries: int | None = None, **options: Any
    ) -> Iterator[httpx.Response]:
        """A successful response whose body is not read yet (closed on exit)."""
        limit = self.max_retries if max_retries is None else max_retries
        response = self._send(Call(method, path, **options), limit, read=False)
        try:
            yield response
        finally:
            response.close()

    def _send(self, call: Call, limit: int, read: bool) -> httpx.Response:
        attempts = Attempts(call, limit)
        while True:
            try:
                with attempts.build(self.http) as request:
                    response = self.http.send(request, stream=True)
                    if read or response.status_code >= 400:
                        try:  # a body that breaks off is retried like a lost answer
                            response.read()
                        finally:
                            response.close()
            except httpx.TransportError as exc:
                self.sleep(attempts.failed(exc))
                continue
            delay = attempts.answered(response)
            if delay is None:
                return response
            self.sleep(delay)


class AsyncTransport:
    """The same as :class:`Transport`, over an ``httpx.AsyncClient``."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        max_retries: int,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        self.http = http
        self.max_retries = max_retries
        self.sleep = sleep

    async def request(self, method: str, path: str, **options: Any) -> httpx.Response:
        return await self._send(Call(method, path, **options), self.max_retries, read=True)

    @asynccontextmanager
    async def stream(
        self, method: str, path: str, *, max_retries: int | None = None, **options: Any
    ) -> AsyncIterator[httpx.Response]:
        limit = self.max_retries if max_retries is None else max_retries
        response = await self._send(Call(method, path, **options), limit, read=False)
        try:
            yield response
        finally:
            await response.aclose()

    async def _send(self, call: Call, limit: int, read: bool) -> httpx.Response:
        attempts = Attempts(call, limit)
        while True:
            try:
                with attempts.build(self.http) as request:
                    response = await self.http.send(request, stream=True)
                    if read or response.status_code >= 400:
                        try:
                            await response.aread()
                        finally:
                            await response.aclose()
            except httpx.TransportError as exc:
                await self.sleep(attempts.failed(exc))
                continue
            delay = attempts.answered(response)
            if delay is None:
                return response
            await self.sleep(delay)
