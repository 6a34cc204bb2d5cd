"""RFC 9457 problem details for every 4xx and 5xx, each kind with a stable ``type`` URI."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

from compressors import ModelpressError

TYPE_BASE = "https://modelpress.dev/problems/"
MEDIA_TYPE = "application/problem+json"

# kind -> (status, title)
KINDS: dict[str, tuple[int, str]] = {
    "bad-request": (400, "The request body could not be parsed"),
    "unauthorized": (401, "Missing or invalid API key"),
    "not-found": (404, "Not found"),
    "method-not-allowed": (405, "Method not allowed"),
    "validation-error": (422, "The request is not valid"),
    "idempotency-conflict": (422, "Idempotency-Key reused with a different request"),
    "payload-too-large": (413, "The upload is larger than allowed"),
    "request-timeout": (408, "The request body arrived too slowly"),
    "too-many-streams": (429, "Too many event streams open"),
    "too-many-auth-failures": (429, "Too many failed authentications"),
    "quota-exceeded": (429, "A job quota of your account is reached"),
    "storage-quota-exceeded": (403, "Your account's storage quota is reached"),
    "job-too-large": (422, "The job asks for more training than allowed"),
    "in-use": (409, "Jobs still use this"),
    "unsupported-media-type": (415, "Unsupported media type"),
    "conflict": (409, "The resource is not in a state that allows this"),
    "not-ready": (409, "The job has not produced this yet"),
    "job-finished": (409, "The job has already finished"),
    "model-rejected": (422, "The model was rejected"),
    "model-too-large": (422, "The model declares more than allowed"),
    "unsafe-archive": (422, "The archive is unsafe"),
    "unsafe-external-data": (422, "The model's external data is unsafe"),
    "dataset-rejected": (422, "The dataset was rejected"),
    "invalid-spec": (422, "The job cannot be run as specified"),
    "not-retrainable": (422, "The model cannot be retrained"),
    "training-diverged": (422, "Training diverged"),
    "job-timed-out": (500, "The job ran past its time limit"),
    "job-failed": (500, "The job failed"),
    "insufficient-storage": (507, "The server is out of storage"),
    "service-unavailable": (503, "A service this request needs is unavailable"),
    "internal-error": (500, "Internal error"),
}


# The body of every 4xx and 5xx, as the OpenAPI document states it (RFC 9457 section 3.1,
# plus the request id and, for validation errors, one entry per failed field).
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details; `type` is stable for each kind of error.",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "description": TYPE_BASE + "<kind>"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string", "description": "what was wrong and what to do about it"},
        "instance": {"type": "string", "description": "the request path"},
        "request_id": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "errors": {
            "type": "array",
            "description": "validation errors only: each failed field",
            "items": {
                "type": "object",
                "properties": {
                    "loc": {"type": "array", "items": {"type": "string"}},
                    "msg": {"type": "string"},
                },
            },
        },
    },
}
# what an operation can answer by its shape alone (see ``describe``)
_GENERIC = {
    status: KINDS[kind][1]
    for status, kind in [
        (400, "bad-request"),
        (401, "unauthorized"),
        (404, "not-found"),
        (413, "payload-too-large"),
        (422, "validation-error"),
        (500, "internal-error"),
    ]
}
_GENERIC[429] = "Too many failed authentications, or a quota reached; wait for Retry-After"


class Problem(Exception):
    def __init__(self, kind: str, detail: str, status: int | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.kind = kind
        self.status = status or KINDS.get(kind, (500, ""))[0]
        self.detail = detail
        self.extra = extra


def problem_body(
    kind: str, detail: str, status: int, instance: str | None = None, **extra: Any
) -> dict[str, Any]:
    body = {
        "type": TYPE_BASE + kind,
        "title": KINDS.get(kind, (status, kind))[1],
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extra)
    return body


def problem_response(
    request: Request,
    kind: str,
    detail: str,
    status: int,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    headers = {**(headers or {}), **({"WWW-Authenticate": "Bearer"} if status == 401 else {})}
    if "retry_after" in extra:  # a 503 says when to come back (clients honour Retry-After)
        headers["Retry-After"] = str(extra["retry_after"])
    request_id = getattr(request.state, "request_id", None)
    if request_id:  # also on answers that bypass the request-id middleware (500s)
        headers["X-Request-Id"] = request_id
    body = problem_body(kind, detail, status, request.url.path, request_id=request_id, **extra)
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def describe(schema: dict[str, Any]) -> dict[str, Any]:
    """Document the errors the handlers below produce: every operation lists the 4xx/5xx it can
    answer (routes add their own, such as 409), each as application/problem+json, in place of
    FastAPI's default 422 ``HTTPValidationError``, which this API never sends."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    components["Problem"] = PROBLEM_SCHEMA
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            statuses = {500}
            if operation.get("security"):
                statuses |= {401, 429}
            if "{" in path:
                statuses.add(404)
            if operation.get("parameters") or "requestBody" in operation:
                statuses.add(422)
            if "requestBody" in operation:
                statuses |= {400, 413}
            responses = operation["responses"]
            for status in statuses:
                responses.setdefault(str(status), {"description": _GENERIC[status]})
            for status, response in responses.items():
                if status[0] in "45":
                    response["content"] = {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
            operation["responses"] = dict(sorted(responses.items()))
    return schema


def _allowed_methods(request: Request) -> list[str]:
    """Every method the path takes, for the ``Allow`` header RFC 9110 requires on a 405; Starlette
    names only those of the first route matching the path (GET and POST are separate routes)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods or set()
    return sorted(methods)


def install(app: FastAPI) -> None:
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            describe(build())
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(request, exc.kind, exc.detail, exc.status, **exc.extra)

    @app.exception_handler(ModelpressError)
    async def _library(request: Request, exc: ModelpressError) -> JSONResponse:
        status = KINDS.get(exc.kind, (422, ""))[0]
        return problem_response(request, exc.kind, exc.message, status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))} for e in exc.errors()
        ]
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            detail = "the body is not valid JSON; send a JSON object."
            return problem_response(request, "bad-request", detail, 400)
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        detail = f"{'.'.join(first['loc'][1:]) or 'body'}: {first['msg']}"
        return problem_response(request, "validation-error", detail, 422, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {
            400: "bad-request",
            401: "unauthorized",
            404: "not-found",
            405: "method-not-allowed",
            413: "payload-too-large",
            415: "unsupported-media-type",
        }.get(exc.status_code, "internal-error" if exc.status_code >= 500 else "validation-error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return problem_response(request, kind, str(exc.detail), exc.status_code, headers=headers)

    app.add_exception_handler(Exception, _unexpected)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A safe sentence for the tenant, the detail in the log under the request id; a full
    disk (or database) is a 507 the client may retry later, not a 500."""
    import logging

    log = logging.getLogger("modelpress")
    if is_disk_full(exc):
        log.error("out of storage: %s", exc)
        detail = "the server is out of storage; try again later, or ask the operator to free space."
        return problem_response(request, "insufficient-storage", detail, 507, retry_after=60)
    log.exception("unhandled error")
    detail = "an unexpected error occurred; it has been logged under this request_id."
    return problem_response(request, "internal-error", detail, 500)


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC (or a quota) from the filesystem, or SQLite's "database or disk is full"."""
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "database or disk is full" in str(exc)
