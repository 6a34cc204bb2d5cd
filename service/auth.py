"""Bearer API keys: ``mp_`` + 32 random bytes, stored as their SHA-256 only."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.models import ApiKey, Tenant


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_key(session: Session, tenant_name: str) -> tuple[Tenant, str]:
    """A new key for ``tenant_name`` (created if new); returns the token, shown once."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
    if tenant is None:
        tenant = Tenant(name=tenant_name)
        session.add(tenant)
        session.flush()
    token = "mp_" + secrets.token_urlsafe(32)
    session.add(ApiKey(tenant_id=tenant.id, digest=digest(token)))
    return tenant, token


def active_key(session: Session, token: str) -> ApiKey | None:
    """The unrevoked key this token is, or None."""
    return session.scalar(select(ApiKey).where(ApiKey.digest == digest(token), ApiKey.revoked.is_(False)))


def tenant_for(session: Session, token: str) -> Tenant | None:
    key = active_key(session, token)
    return session.get(Tenant, key.tenant_id) if key else None


def tenant_for_key_id(session: Session, key_id: str) -> Tenant | None:
    """The tenant of key ``key_id`` while it is unrevoked (a dashboard session holds the key's id)."""
    key = session.get(ApiKey, key_id)
    return session.get(Tenant, key.tenant_id) if key is not None and not key.revoked else None
