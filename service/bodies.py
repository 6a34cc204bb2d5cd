"""Request bodies are held to a size, a pace and an idle limit while they arrive, before any
handler, form parser or temp file sees them.

- Size: 413 past the limit, whether or not Content-Length was sent or told the truth. Only a
  ``multipart/form-data`` body to an upload path gets the upload limit; anything else (JSON,
  whatever its path) gets the JSON limit, so a huge JSON body is refused, not read.
- Pace: a body that sends nothing for ``upload_idle_seconds``, or that averages under
  ``upload_min_bytes_per_second`` once ``upload_grace_seconds`` have passed, gets 408 and its
  connection is closed: a thousand senders at one byte a second cannot hold the server.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import problems
from service.settings import Settings

JSON_LIMIT = 1 << 20
_UPLOAD_PATHS = {"models": ("/v1/models", "/ui/models"), "datasets": ("/v1/datasets", "/ui/datasets")}


class _Refused(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind, self.detail = kind, detail


class BodyLimit:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    def limit_for(self, scope: Scope) -> int:
        content_type = dict(scope["headers"]).get(b"content-type", b"")
        if content_type.lower().startswith(b"multipart/form-data"):
            if scope["path"].startswith(_UPLOAD_PATHS["models"]):
                return self.settings.max_model_bytes + (1 << 20)
            if scope["path"].startswith(_UPLOAD_PATHS["datasets"]):
                return self.settings.max_dataset_bytes + (1 << 20)
        return JSON_LIMIT

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._reject(scope, send, 413, "payload-too-large", _too_large(limit))
            return
        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, self._paced(receive, limit), tracking)
        except Exception as exc:
            refused = _refusal_in(exc)
            if refused is None:
                raise
            if not started:
                status = 413 if refused.kind == "payload-too-large" else 408
                await self._reject(scope, send, status, refused.kind, refused.detail)

    def _paced(self, receive: Receive, limit: int) -> Receive:
        settings = self.settings
        begun = time.monotonic()
        seen = 0

        complete = False

        async def paced() -> Message:
            nonlocal seen, complete
            if complete:  # the body is in: later receives wait for a disconnect, untimed
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), settings.upload_idle_seconds)
            except TimeoutError:
                raise _Refused(
                    "request-timeout",
                    f"the request body sent nothing for {settings.upload_idle_seconds:g} s; send it again.",
                ) from None
            if message["type"] != "http.request":
                return message
            complete = not message.get("more_body", False)
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _Refused("payload-too-large", _too_large(limit))
            elapsed = time.monotonic() - begun
            if (
                elapsed > settings.upload_grace_seconds
                and seen < settings.upload_min_bytes_per_second * elapsed
            ):
                raise _Refused(
                    "request-timeout",
                    f"the request body arrives at {seen / elapsed:,.0f} bytes/s, under the "
                    f"{settings.upload_min_bytes_per_second:,} bytes/s minimum; send it over a faster link.",
                )
            return message

        return paced

    async def _reject(self, scope: Scope, send: Send, status: int, kind: str, detail: str) -> None:
        from fastapi.responses import JSONResponse

        rid = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1") or uuid.uuid4().hex
        body = problems.problem_body(kind, detail, status, scope["path"], request_id=rid)
        headers = {"Connection": "close", "X-Request-Id": rid}
        response = JSONResponse(body, status, media_type=problems.MEDIA_TYPE, headers=headers)

        async def no_body() -> Message:  # the rest of the body is never read: the connection closes
            return {"type": "http.disconnect"}

        await response(scope, no_body, send)


def _refusal_in(exc: BaseException | None, depth: int = 0) -> _Refused | None:
    """The refusal an exception carries: the middleware between here and the handler reraises
    what the body reader raised inside a task group, so it arrives wrapped or chained."""
    if exc is None or depth > 8:
        return None
    if isinstance(exc, _Refused):
        return exc
    for inner in getattr(exc, "exceptions", ()):
        found = _refusal_in(inner, depth + 1)
        if found is not None:
            return found
    return _refusal_in(exc.__cause__ or exc.__context__, depth + 1)


def _too_large(limit: int) -> str:
    return f"the request body exceeds the {limit:,}-byte limit."
