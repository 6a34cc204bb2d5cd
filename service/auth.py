"""Bearer API keys: ``mp_`` + 32 random bytes, stored as their SHA-256 only."""

from __future__ import annotations

import hashlib
import math
import secrets
import threading
import time
from collections import OrderedDict, deque

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.models import ApiKey, Tenant
from service.problems import Problem

PREFIX = 11  # "mp_" and 8 characters: enough to tell keys apart, far too little to guess one
WINDOW = 60.0
TRACKED = 10_000  # addresses and prefixes remembered; the least recently failed are forgotten


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


class FailedAuth:
    """Failed authentications in the last minute, per client address and per key prefix: past
    ``per_minute`` of either, requests from that address or with that prefix get 429 with
    ``Retry-After`` before their key is even looked up. In memory, per API process."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _keys(address: str, token: str) -> tuple[str, str]:
        return f"address:{address}", f"prefix:{token[:PREFIX]}"

    def check(self, address: str, token: str) -> None:
        """Raise the 429 problem while the address or the key's prefix is held back."""
        now = time.monotonic()
        with self._lock:
            waits = [self._wait(key, now) for key in self._keys(address, token)]
        wait = max(waits)
        if wait > 0:
            raise Problem(
                "too-many-auth-failures",
                f"more than {self.per_minute} failed authentications in a minute from this address "
                f"or with this key; try again in {wait} s with a valid key.",
                retry_after=wait,
            )

    def failed(self, address: str, token: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in self._keys(address, token):
                times = self._failures.pop(key, None) or deque()
                times.append(now)
                while len(times) > self.per_minute:
                    times.popleft()
                self._failures[key] = times  # most recently failed last
            while len(self._failures) > TRACKED:
                self._failures.popitem(last=False)

    def _wait(self, key: str, now: float) -> int:
        times = self._failures.get(key)
        while times and times[0] <= now - WINDOW:
            times.popleft()
        if not times or len(times) < self.per_minute:
            return 0
        return max(1, math.ceil(times[0] + WINDOW - now))
