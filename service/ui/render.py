"""Pages from Jinja2 templates, and the route class that turns errors into pages.

An error reaches a person as the API would state it (its problem's status, title and
detail), on a page rather than as JSON; a request without a valid session is sent to the
sign-in form.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from compressors import ModelpressError
from service.problems import KINDS, Problem, problem_body
from service.ui import format as fmt
from service.ui.access import SignInRequired

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
templates.env.filters.update(fmt.FILTERS)

# kinds only the dashboard raises, with their titles (the API's own come from service.problems)
TITLES = {"csrf-rejected": "The form could not be verified"}
# pages are built from this origin alone: no inline script, no third-party anything
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def page(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    viewer = context.get("viewer")
    context.setdefault("csrf", viewer.session.csrf if viewer is not None else "")
    response = templates.TemplateResponse(request, template, context, status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    return response


def problem_of(exc: Exception) -> dict[str, Any]:
    """The problem body the API would answer ``exc`` with."""
    if isinstance(exc, Problem):
        kind, detail, status = exc.kind, exc.detail, exc.status
    elif isinstance(exc, ModelpressError):
        kind, detail, status = exc.kind, exc.message, KINDS.get(exc.kind, (422, ""))[0]
    elif isinstance(exc, ValidationError | RequestValidationError):
        kind, status = "validation-error", 422
        detail = "; ".join(_field_error(e) for e in exc.errors())
    else:
        raise TypeError(f"not a problem: {type(exc).__name__}")
    body = problem_body(kind, detail, status)
    body["title"] = TITLES.get(kind, body["title"])
    return body


def _field_error(error: Any) -> str:
    where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path"))
    return f"{where or 'form'}: {error.get('msg', 'invalid')}"


def sign_in_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/ui/login?next={quote(target, safe='')}", status_code=303)


PROBLEMS = (Problem, ModelpressError, ValidationError, RequestValidationError)


class PageRoute(APIRoute):
    """A dashboard route: a missing session redirects to sign-in, a problem becomes a page."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except SignInRequired:
                return sign_in_redirect(request)
            except PROBLEMS as exc:
                problem = problem_of(exc)
                return page(request, "error.html", problem["status"], problem=problem)

        return guarded
