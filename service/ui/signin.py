"""/ui/login and /ui/logout: an API key in, a signed session cookie out (the key is not kept)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import RedirectResponse

from service.auth import FailedAuth, active_key
from service.deps import ReadSessionDep, SettingsDep
from service.problems import Problem
from service.ui import session as cookie
from service.ui.access import PostingViewer, verify_post
from service.ui.render import PageRoute, page, problem_of
from service.ui.session import SIGNED_OUT_SECONDS, UiSession

router = APIRouter(prefix="/ui", include_in_schema=False, route_class=PageRoute)
HOME = "/ui/jobs"


def safe_next(target: str) -> str:
    """Where to go after signing in: a dashboard path on this site, never another host."""
    inside = target == "/ui" or target.startswith(("/ui/", "/ui?"))
    return target if inside and "\\" not in target and "//" not in target else HOME


def _form(request: Request, target: str, status: int = 200, problem: dict | None = None) -> Response:
    # a valid session is kept as it is: a failed or forged sign-in attempt signs nobody out
    session = cookie.read(request) or UiSession.fresh(SIGNED_OUT_SECONDS)
    response = page(request, "login.html", status, csrf=session.csrf, next=safe_next(target), problem=problem)
    cookie.write(request, response, session)
    return response


@router.get("")
def home() -> RedirectResponse:
    return RedirectResponse(HOME, status_code=303)


@router.get("/login")
def login_form(request: Request, next: str = HOME) -> Response:
    return _form(request, next)


@router.post("/login")
def login(
    request: Request,
    db: ReadSessionDep,
    settings: SettingsDep,
    token: Annotated[str, Form(max_length=500)] = "",
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=2000)] = HOME,
) -> Response:
    try:
        verify_post(request, cookie.read(request), csrf_token)
    except Problem as exc:
        return _form(request, next, exc.status, problem_of(exc))
    failures: FailedAuth = request.app.state.auth_failures
    address = request.client.host if request.client else ""
    try:
        failures.check(address, token.strip())
    except Problem as exc:
        return _form(request, next, exc.status, problem_of(exc))
    key = active_key(db, token.strip()) if token.strip() else None
    if key is None:
        failures.failed(address, token.strip())
        refused = Problem(
            "unauthorized", "the API key is not valid; create one with `modelpress create-key`."
        )
        return _form(request, next, 401, problem_of(refused))
    response = RedirectResponse(safe_next(next), status_code=303)
    cookie.write(request, response, UiSession.fresh(settings.session_max_age_seconds, key.id))
    return response


@router.post("/logout")
def logout(viewer: PostingViewer) -> Response:
    response = RedirectResponse("/ui/login", status_code=303)
    cookie.clear(response)
    return response
