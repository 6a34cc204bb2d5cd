"""modelpress-client: the Python SDK and command line of the modelpress compression service.

Example::

    from modelpress_client import Client

    with Client() as client:  # MODELPRESS_URL, MODELPRESS_TOKEN
        model = client.models.upload("model.onnx")
        job = client.jobs.create(model.id, "svd", rank={"energy": 0.9})
        job = client.jobs.wait(job.id)

``AsyncClient`` offers the same resources to an event loop (``await client.jobs.wait(...)``).
"""

from modelpress_client._client import AsyncClient, Client
from modelpress_client._version import __version__
from modelpress_client.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ConflictError,
    DatasetRejected,
    IdempotencyConflict,
    InsufficientStorage,
    InUse,
    InvalidRequest,
    InvalidSpec,
    JobFinished,
    JobTooLarge,
    ModelpressError,
    ModelRejected,
    ModelTooLarge,
    NotFoundError,
    NotReady,
    NotRetrainable,
    PayloadTooLarge,
    PermissionDeniedError,
    QuotaExceeded,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    StorageQuotaExceeded,
    UnprocessableError,
    UnsafeArchive,
    UnsafeExternalData,
    UnsupportedMediaType,
    WaitTimeout,
)
from modelpress_client.types import Dataset, Job, Model, Page, Problem, Progress

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ConfigurationError",
    "ConflictError",
    "Dataset",
    "DatasetRejected",
    "IdempotencyConflict",
    "InUse",
    "InsufficientStorage",
    "InvalidRequest",
    "InvalidSpec",
    "Job",
    "JobFinished",
    "JobTooLarge",
    "Model",
    "ModelRejected",
    "ModelTooLarge",
    "ModelpressError",
    "NotFoundError",
    "NotReady",
    "NotRetrainable",
    "Page",
    "PayloadTooLarge",
    "PermissionDeniedError",
    "Problem",
    "Progress",
    "QuotaExceeded",
    "RateLimited",
    "ServerError",
    "ServiceUnavailable",
    "StorageQuotaExceeded",
    "UnprocessableError",
    "UnsafeArchive",
    "UnsafeExternalData",
    "UnsupportedMediaType",
    "WaitTimeout",
    "__version__",
]
