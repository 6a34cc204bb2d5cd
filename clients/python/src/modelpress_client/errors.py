"""One exception class per kind of failure.

The server answers every 4xx and 5xx with an RFC 9457 problem (``type``, ``title``, ``status``,
``detail``, ``request_id``). :func:`error_for` picks the most specific class: first by the
problem ``type`` (``.../problems/model-rejected`` -> :class:`ModelRejected`), then by status.
"""

from __future__ import annotations

from typing import Any

import httpx

PROBLEM_BASE = "https://modelpress.dev/problems/"


class ModelpressError(Exception):
    """Base class of everything this package raises."""


class ConfigurationError(ModelpressError):
    """The client is missing its URL or token; nothing was sent."""


class APIError(ModelpressError):
    """A request did not get a usable answer."""

    def __init__(self, message: str, request: httpx.Request | None) -> None:
        super().__init__(message)
        self.message = message
        self.request = request


class APIConnectionError(APIError):
    """The server could not be reached (refused, reset, DNS) after every retry."""

    def __init__(self, request: httpx.Request | None, message: str | None = None) -> None:
        where = f" at {request.url.scheme}://{request.url.netloc.decode()}" if request else ""
        super().__init__(message or f"could not reach the modelpress server{where}; is it running?", request)


class APITimeoutError(APIConnectionError):
    """The server did not answer in time after every retry."""

    def __init__(self, request: httpx.Request | None) -> None:
        super().__init__(request, "the modelpress server did not answer in time; try a longer timeout.")


class APIStatusError(APIError):
    """The server answered with a 4xx or 5xx problem.

    ``status`` is the HTTP status, ``type`` the problem type URI, ``kind`` its last segment
    (``model-rejected``), ``detail`` the server's one sentence, ``request_id`` the id to quote
    when reporting a bug, ``body`` the whole problem document.
    """

    status: int  # on the class: the status it stands for (from _BY_STATUS); on an error: the answer's

    def __init__(self, response: httpx.Response, body: dict[str, Any]) -> None:
        self.response = response
        self.status = response.status_code
        self.body = body
        self.type: str = str(body.get("type") or "about:blank")
        self.kind: str = self.type.removeprefix(PROBLEM_BASE)
        self.title: str = str(body.get("title") or response.reason_phrase)
        self.detail: str = str(body.get("detail") or self.title or f"HTTP {self.status}")
        self.request_id: str | None = response.headers.get("x-request-id") or body.get("request_id")
        super().__init__(f"{self.status} {self.kind}: {self.detail}", response.request)

    def __str__(self) -> str:
        suffix = f" (request id {self.request_id})" if self.request_id else ""
        return f"{self.message}{suffix}"


class BadRequestError(APIStatusError):
    """400: the server could not parse the request body."""


class AuthenticationError(APIStatusError):
    """401: the token is missing, wrong or revoked."""


class PermissionDeniedError(APIStatusError):
    """403: the token may not do this."""


class NotFoundError(APIStatusError):
    """404: no such model, dataset, job or artifact in your account."""


class ConflictError(APIStatusError):
    """409: the resource is not in a state that allows this."""


class NotReady(ConflictError):
    """409: the job has not produced this artifact (yet)."""


class JobFinished(ConflictError):
    """409: the job has already finished (e.g. cancelling it changes nothing)."""


class InUse(ConflictError):
    """409: jobs still use this model or dataset; delete those jobs first."""


class StorageQuotaExceeded(PermissionDeniedError):
    """403: the account's stored models and datasets reached their quota; delete some."""


class PayloadTooLarge(APIStatusError):
    """413: the upload is larger than the server allows."""


class UnsupportedMediaType(APIStatusError):
    """415: the body is not of a type the server takes here."""


class UnprocessableError(APIStatusError):
    """422: the request was understood and refused."""


class InvalidRequest(UnprocessableError):
    """422: a field of the request is invalid; ``errors`` lists each failed field."""

    @property
    def errors(self) -> list[dict[str, Any]]:
        return list(self.body.get("errors") or [])


class IdempotencyConflict(UnprocessableError):
    """422: this Idempotency-Key was already used with a different request."""


class ModelRejected(UnprocessableError):
    """422: the model is unreadable, unsafe or not one the service can work on."""


class ModelTooLarge(ModelRejected):
    """422: the model declares more than the server allows."""


class UnsafeArchive(ModelRejected):
    """422: the uploaded archive is unsafe to unpack."""


class UnsafeExternalData(ModelRejected):
    """422: the model's external data is unsafe to read."""


class DatasetRejected(UnprocessableError):
    """422: the dataset is not a plain .npz or does not fit the model."""


class InvalidSpec(UnprocessableError):
    """422: the job cannot be run as specified (e.g. an unreachable target)."""


class NotRetrainable(UnprocessableError):
    """422: the model cannot be turned into a trainable network."""


class RateLimited(APIStatusError):
    """429: too many requests; retried (honouring Retry-After) before it reaches you."""


class QuotaExceeded(RateLimited):
    """429: the account has as many unfinished or queued jobs as it may; retried, then raised."""


class JobTooLarge(UnprocessableError):
    """422: the job or sweep asks for more compressions or training epochs than allowed."""


class ServerError(APIStatusError):
    """5xx: the server failed; retried before it reaches you."""


class ServiceUnavailable(ServerError):
    """503: a service the request needs is unavailable; retried before it reaches you."""


class InsufficientStorage(ServerError):
    """507: the server is out of storage; retried (honouring Retry-After) before it reaches you."""


class WaitTimeout(ModelpressError, TimeoutError):
    """``jobs.wait(timeout=...)`` ran out before the job reached a terminal state."""

    def __init__(self, job_id: str, timeout: float, status: str | None) -> None:
        super().__init__(f"job {job_id} is still {status or 'unfinished'} after {timeout:g} s")
        self.job_id, self.timeout, self.status = job_id, timeout, status


_BY_KIND: dict[str, type[APIStatusError]] = {
    "bad-request": BadRequestError,
    "unauthorized": AuthenticationError,
    "not-found": NotFoundError,
    "conflict": ConflictError,
    "not-ready": NotReady,
    "job-finished": JobFinished,
    "in-use": InUse,
    "storage-quota-exceeded": StorageQuotaExceeded,
    "quota-exceeded": QuotaExceeded,
    "job-too-large": JobTooLarge,
    "payload-too-large": PayloadTooLarge,
    "unsupported-media-type": UnsupportedMediaType,
    "validation-error": InvalidRequest,
    "idempotency-conflict": IdempotencyConflict,
    "model-rejected": ModelRejected,
    "model-too-large": ModelTooLarge,
    "unsafe-archive": UnsafeArchive,
    "unsafe-external-data": UnsafeExternalData,
    "dataset-rejected": DatasetRejected,
    "invalid-spec": InvalidSpec,
    "not-retrainable": NotRetrainable,
    "service-unavailable": ServiceUnavailable,
    "insufficient-storage": InsufficientStorage,
    "internal-error": ServerError,
}
# the class of an answer whose problem type is not one of ours (a proxy's), by its status
_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: UnprocessableError,
    429: RateLimited,
    500: ServerError,
    503: ServiceUnavailable,
    507: InsufficientStorage,
}
for _status, _cls in _BY_STATUS.items():
    _cls.status = _status  # subclasses inherit it


def error_for(response: httpx.Response) -> APIStatusError:
    """The exception for a 4xx/5xx response whose body has been read."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        text = response.text.strip()[:200]
        body = {"detail": text or response.reason_phrase}
    kind = str(body.get("type") or "").removeprefix(PROBLEM_BASE)
    cls = _BY_KIND.get(kind)
    # a kind only counts when its class agrees with the status (a proxy's 502 is not ours)
    if cls is None or (cls.status != response.status_code and not _same_family(cls, response.status_code)):
        cls = _BY_STATUS.get(response.status_code) or (
            ServerError if response.status_code >= 500 else APIStatusError
        )
    return cls(response, body)


def _same_family(cls: type[APIStatusError], status: int) -> bool:
    return cls.status >= 500 and status >= 500
