"""Who is signed in, and whether a form post comes from the dashboard's own pages.

Every request re-checks the session's key in the API's key table (a revoked key signs its
sessions out). Every POST must carry the session's CSRF token and, when the browser names
one, come from this origin: SameSite=Strict keeps the cookie off cross-site requests, and
these checks hold where a browser or a proxy does not honour it.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Form, Request

from service.auth import tenant_for_key_id
from service.db import session_scope
from service.models import Tenant
from service.problems import Problem
from service.ui import session as cookie
from service.ui.session import UiSession


class SignInRequired(Exception):
    """No valid session: a page answers with a redirect to the sign-in form."""


@dataclass(frozen=True)
class SignedIn:
    tenant: Tenant
    session: UiSession


def signed_in(request: Request) -> SignedIn:
    session = cookie.read(request)
    if session is None or session.key_id is None:
        raise SignInRequired
    with session_scope(request.app.state.settings.db_url, readonly=True) as db:
        tenant = tenant_for_key_id(db, session.key_id)
    if tenant is None:
        raise SignInRequired
    return SignedIn(tenant, session)


def from_this_origin(request: Request) -> bool:
    """False when the browser says the request was made by another site."""
    if request.headers.get("sec-fetch-site") in ("cross-site", "same-site"):
        return False
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host")


def verify_post(request: Request, session: UiSession | None, token: str) -> None:
    if not from_this_origin(request):
        raise Problem(
            "csrf-rejected", "this form was sent from another site; use the dashboard's own page.", 403
        )
    if session is None or not hmac.compare_digest(session.csrf.encode(), token.encode()):
        raise Problem(
            "csrf-rejected", "the form has expired or was not made by this dashboard; reload it.", 403
        )


def posted_from_dashboard(
    request: Request,
    viewer: Annotated[SignedIn, Depends(signed_in)],
    csrf_token: Annotated[str, Form(max_length=200)] = "",
) -> SignedIn:
    verify_post(request, viewer.session, csrf_token)
    return viewer


Viewer = Annotated[SignedIn, Depends(signed_in)]
PostingViewer = Annotated[SignedIn, Depends(posted_from_dashboard)]
