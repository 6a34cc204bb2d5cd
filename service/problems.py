"""RFC 9457 problem details for every 4xx and 5xx, each kind with a stable ``type`` URI."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from compressors.errors import ModelpressError

TYPE_BASE = "https://modelpress.dev/problems/"
MEDIA_TYPE = "application/problem+json"

# kind -> (status, title)
KINDS: dict[str, tuple[int, str]] = {
    "unauthorized": (401, "Missing or invalid API key"),
    "not-found": (404, "Not found"),
    "method-not-allowed": (405, "Method not allowed"),
    "validation-error": (422, "The request is not valid"),
    "idempotency-conflict": (422, "Idempotency-Key reused with a different request"),
    "payload-too-large": (413, "The upload is larger than allowed"),
    "unsupported-media-type": (415, "Unsupported media type"),
    "conflict": (409, "The resource is not in a state that allows this"),
    "not-ready": (409, "The job has not produced this yet"),
    "model-rejected": (422, "The model was rejected"),
    "model-too-large": (422, "The model declares more than allowed"),
    "unsafe-archive": (422, "The archive is unsafe"),
    "unsafe-external-data": (422, "The model's external data is unsafe"),
    "dataset-rejected": (422, "The dataset was rejected"),
    "invalid-spec": (422, "The job cannot be run as specified"),
    "not-retrainable": (422, "The model cannot be retrained"),
    "service-unavailable": (503, "A service this request needs is unavailable"),
    "internal-error": (500, "Internal error"),
}


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


def problem_response(request: Request, kind: str, detail: str, status: int, **extra: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    request_id = getattr(request.state, "request_id", None)
    body = problem_body(kind, detail, status, request.url.path, request_id=request_id, **extra)
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def install(app: FastAPI) -> None:
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
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        detail = f"{'.'.join(first['loc'][1:]) or 'body'}: {first['msg']}"
        return problem_response(request, "validation-error", detail, 422, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {
            401: "unauthorized",
            404: "not-found",
            405: "method-not-allowed",
            413: "payload-too-large",
            415: "unsupported-media-type",
        }.get(exc.status_code, "internal-error" if exc.status_code >= 500 else "validation-error")
        return problem_response(request, kind, str(exc.detail), exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        import logging

        logging.getLogger("modelpress").exception("unhandled error")
        return problem_response(
            request, "internal-error", "an unexpected error occurred; it has been logged.", 500
        )
