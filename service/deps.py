"""Request dependencies as ``Annotated`` aliases: settings, sessions, the caller's tenant."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from service.auth import FailedAuth, tenant_for
from service.db import session_factory, session_scope
from service.models import Tenant
from service.problems import Problem
from service.settings import Settings
from service.store import ArtifactStore


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    with session_scope(request.app.state.settings.db_url) as session:
        yield session


def get_read_session(request: Request) -> Iterator[Session]:
    session = session_factory(request.app.state.settings.db_url, readonly=True)()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


bearer = HTTPBearer(auto_error=False, description="an API key from `modelpress create-key`")


def current_tenant(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Tenant:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Problem("unauthorized", "send an API key as 'Authorization: Bearer <key>'.")
    failures: FailedAuth = request.app.state.auth_failures
    address = request.client.host if request.client else ""
    failures.check(address, credentials.credentials)  # 429 while this address or key is held back
    with session_scope(request.app.state.settings.db_url, readonly=True) as session:
        tenant = tenant_for(session, credentials.credentials)
    if tenant is None:
        failures.failed(address, credentials.credentials)
        raise Problem("unauthorized", "the API key is not valid; create one with `modelpress create-key`.")
    return tenant


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
ReadSessionDep = Annotated[Session, Depends(get_read_session)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
CurrentTenant = Annotated[Tenant, Depends(current_tenant)]
