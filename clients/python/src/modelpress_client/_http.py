"""Sending one logical request: retries with jittered backoff, ``Retry-After``, typed errors.

A request is retried on connection errors, timeouts and 408/409/429/5xx answers. Callers that
create something (jobs, sweeps) pass an ``Idempotency-Key`` header, which every retry reuses, so
a retry after a lost answer returns the first job instead of making a second one.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from modelpress_client import errors

log = logging.getLogger("modelpress_client")

RETRY_STATUSES = frozenset({408, 409, 429})
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
    return response.status_code in RETRY_STATUSES or response.status_code >= 500


class Transport:
    """Wraps an ``httpx.Client`` and turns requests into responses or typed errors."""

    def __init__(self, http: httpx.Client, max_retries: int, sleep: Callable[[float], None] = time.sleep):
        self.http = http
        self.max_retries = max_retries
        self.sleep = sleep

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        upload: tuple[str, Path] | None = None,
        timeout: float | httpx.Timeout | None = None,
    ) -> httpx.Response:
        """The response (body read) of a request that succeeded, after retries; else an error."""
        return self._send(method, path, json, params, headers, upload, timeout, None, read=True)

    @contextmanager
    def stream(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        upload: tuple[str, Path] | None = None,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int | None = None,
    ) -> Iterator[httpx.Response]:
        """A successful response whose body is not read yet (closed on exit)."""
        response = self._send(method, path, json, params, headers, upload, timeout, max_retries, read=False)
        try:
            yield response
        finally:
            response.close()

    def _send(
        self,
        method: str,
        path: str,
        json: Any,
        params: dict[str, Any] | None,
        headers: dict[str, str] | None,
        upload: tuple[str, Path] | None,
        timeout: float | httpx.Timeout | None,
        max_retries: int | None,
        read: bool,
    ) -> httpx.Response:
        limit = self.max_retries if max_retries is None else max_retries
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        retry = 0
        while True:
            request: httpx.Request | None = None
            file = None
            try:
                if upload is not None:
                    # reopened per attempt: a retry must send the whole file again
                    field, source = upload
                    file = source.open("rb")
                    files = {field: (source.name, file, "application/octet-stream")}
                    request = self.http.build_request(
                        method, path, params=params, headers=headers, files=files, **extra
                    )
                else:
                    request = self.http.build_request(
                        method, path, json=json, params=params, headers=headers, **extra
                    )
                started = time.monotonic()
                response = self.http.send(request, stream=True)
                if read:  # inside the try: a body that breaks off is retried like a lost answer
                    try:
                        response.read()
                    finally:
                        response.close()
            except httpx.TimeoutException as exc:
                error: errors.APIError = errors.APITimeoutError(request)
                cause: Exception = exc
            except httpx.TransportError as exc:
                error, cause = errors.APIConnectionError(request), exc
            else:
                log.debug(
                    "%s %s -> %s in %.0f ms (request id %s)",
                    method,
                    request.url,
                    response.status_code,
                    (time.monotonic() - started) * 1e3,
                    response.headers.get("x-request-id"),
                )
                if response.status_code < 400:
                    return response
                if retry < limit and should_retry(response):
                    delay = retry_after(response)
                    response.close()
                    delay = backoff(retry) if delay is None else delay
                    log.debug("retrying %s %s in %.2f s (%d of %d)", method, path, delay, retry + 1, limit)
                    self.sleep(delay)
                    retry += 1
                    continue
                response.read()
                response.close()
                raise errors.error_for(response)
            finally:
                if file is not None:
                    file.close()
            log.debug("%s %s failed: %r", method, path, cause)
            if retry >= limit:
                raise error from cause
            delay = backoff(retry)
            log.debug("retrying %s %s in %.2f s (%d of %d)", method, path, delay, retry + 1, limit)
            self.sleep(delay)
            retry += 1
