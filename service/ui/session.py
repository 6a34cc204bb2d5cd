"""The dashboard's session: a signed cookie holding a CSRF token, an expiry and, once signed in,
the id of the API key that signed in.

The key itself never leaves the sign-in request. Every request looks the key id up in the
same key table the API checks bearer tokens against, so revoking a key ends its sessions at
once. The cookie is HMAC-SHA256-signed with ``MODELPRESS_SESSION_SECRET``, or with a secret
generated on first use and kept in the data folder (readable by its owner only), so that every
API process of one deployment signs alike and a restart signs nobody out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request, Response

from service.settings import Settings

COOKIE = "modelpress_session"
SIGNED_OUT_SECONDS = 3600  # how long a sign-in form stays good
_CONTEXT = b"modelpress-ui-session."  # keeps these signatures apart from any other use of the secret


@dataclass(frozen=True)
class UiSession:
    csrf: str
    expires: int  # unix seconds
    key_id: str | None = None  # None until signed in

    @classmethod
    def fresh(cls, lifetime: int, key_id: str | None = None) -> UiSession:
        return cls(secrets.token_urlsafe(24), int(time.time()) + lifetime, key_id)

    def signed_in(self, key_id: str, lifetime: int) -> UiSession:
        """A new session for ``key_id``, with a new CSRF token (no token outlives a sign-in)."""
        return UiSession.fresh(lifetime, key_id)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(secret: bytes, session: UiSession) -> str:
    payload = _b64(
        json.dumps({"v": 1, "c": session.csrf, "e": session.expires, "k": session.key_id}).encode()
    )
    mac = hmac.new(secret, _CONTEXT + payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{_b64(mac)}"


def unsign(secret: bytes, value: str, now: float | None = None) -> UiSession | None:
    """The session ``value`` holds, or None when it is forged, malformed or expired."""
    payload, _, mac = value.partition(".")
    try:
        expected = hmac.new(secret, _CONTEXT + payload.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, _unb64(mac)):
            return None
        data = json.loads(_unb64(payload))
        session = UiSession(
            str(data["c"]), int(data["e"]), data["k"] if data["k"] is None else str(data["k"])
        )
    except (ValueError, KeyError, TypeError):
        return None
    if data.get("v") != 1 or session.expires <= (time.time() if now is None else now):
        return None
    return session


def load_secret(settings: Settings) -> bytes:
    """The configured secret, else the one kept in the data folder (made there on first use)."""
    if settings.session_secret is not None:
        return settings.session_secret.get_secret_value().encode()
    path = settings.data_dir / "session-secret"
    if not path.exists():
        _create_secret(path)
    secret = path.read_bytes().strip()
    if len(secret) < 32:
        raise RuntimeError(f"{path} holds a secret shorter than 32 characters; delete it to make a new one.")
    return secret


def _create_secret(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".session-secret-{secrets.token_hex(8)}")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(48))
    try:
        os.link(staged, path)  # atomic, and refuses to replace: two processes agree on one secret
    except FileExistsError:
        pass
    finally:
        staged.unlink()


def _secret(request: Request) -> bytes:
    state = request.app.state
    if getattr(state, "ui_secret", None) is None:
        state.ui_secret = load_secret(state.settings)
    return state.ui_secret


def read(request: Request) -> UiSession | None:
    value = request.cookies.get(COOKIE)
    return unsign(_secret(request), value) if value else None


def write(request: Request, response: Response, session: UiSession) -> None:
    response.set_cookie(
        COOKIE,
        sign(_secret(request), session),
        max_age=max(session.expires - int(time.time()), 0),
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def clear(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict")
