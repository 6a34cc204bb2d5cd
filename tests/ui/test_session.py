"""The dashboard's sign-in, session cookie, CSRF checks and tenant scoping, in-process."""

from __future__ import annotations

import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import update

from service import migrate
from service.app import create_app
from service.auth import create_key, digest
from service.db import session_scope
from service.models import ApiKey
from service.settings import Settings
from service.ui.session import COOKIE, UiSession, load_secret, sign, unsign
from tests import builders


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = Settings(data_dir=tmp_path_factory.mktemp("ui"), workers=0)
    migrate.upgrade(settings.db_url)
    return settings


@pytest.fixture(scope="module")
def app_client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def new_key(settings: Settings, tenant: str) -> str:
    with session_scope(settings.db_url) as session:
        _, token = create_key(session, tenant)
    return token


def browser(settings: Settings) -> TestClient:
    """A fresh cookie jar on the same app, as a second browser is."""
    return TestClient(create_app(settings))


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, html[:500]
    return found.group(1)


def sign_in(client: TestClient, token: str) -> str:
    """Sign in through the form; returns the CSRF token of the signed-in session."""
    form = client.get("/ui/login")
    answer = client.post(
        "/ui/login", data={"token": token, "csrf_token": csrf_of(form.text)}, follow_redirects=False
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/jobs", answer.text
    return csrf_of(client.get("/ui/jobs").text)


def put_cookie(client: TestClient, value: str) -> None:
    """Send ``value`` as the session cookie from now on (the jar's own copy dropped first: with
    httpx2 installed, a second cookie of the same name sat beside it and the old one was sent)."""
    client.cookies.clear()
    client.cookies.set(COOKIE, value, path="/ui")


def signed_out(client: TestClient) -> bool:
    answer = client.get("/ui/jobs", follow_redirects=False)
    return answer.status_code == 303 and answer.headers["location"].startswith("/ui/login?next=")


@pytest.fixture(scope="module")
def acme_job(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A queued job of tenant acme (no workers run here, so it stays queued)."""
    path = builders.save(builders.gemm(64, 10), tmp_path_factory.mktemp("m") / "gemm.onnx")
    with TestClient(
        create_app(settings), headers={"Authorization": f"Bearer {new_key(settings, 'acme')}"}
    ) as api:
        model = api.post("/v1/models", files={"file": ("gemm.onnx", path.read_bytes())}).json()
        job = api.post("/v1/jobs", json={"model_id": model["id"], "method": "svd", "rank": {"energy": 0.9}})
        assert job.status_code == 202, job.text
        return str(job.json()["id"])


def test_sign_in_sets_an_httponly_samesite_strict_signed_cookie(settings: Settings) -> None:
    client = browser(settings)
    form = client.get("/ui/login")
    answer = client.post(
        "/ui/login",
        data={"token": new_key(settings, "acme"), "csrf_token": csrf_of(form.text)},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(COOKIE + "=")
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower() and "Path=/ui" in cookie
    assert f"Max-Age={settings.session_max_age_seconds}" in cookie
    assert "mp_" not in cookie  # the key itself is not in it
    assert client.get("/ui/jobs").status_code == 200


def test_a_forged_cookie_redirects_to_sign_in(settings: Settings) -> None:
    client = browser(settings)
    sign_in(client, new_key(settings, "acme"))
    genuine = client.cookies[COOKIE]
    payload, mac = genuine.split(".")
    key_id = UiSession.fresh(60, "key_someone_else")
    forgeries = [
        sign(b"x" * 48, UiSession.fresh(3600, "key_whatever")),  # another secret
        sign(b"x" * 48, key_id).split(".")[0] + "." + mac,  # another payload under this signature
        payload + "." + mac[:-2] + ("AA" if not mac.endswith("AA") else "BB"),  # a changed signature
        "not-a-session",
    ]
    for forged in forgeries:
        put_cookie(client, forged)
        assert signed_out(client), forged
    put_cookie(client, genuine)
    assert not signed_out(client)  # the check itself lets the genuine cookie through


def test_an_expired_cookie_redirects_to_sign_in(settings: Settings) -> None:
    client = browser(settings)
    sign_in(client, new_key(settings, "acme"))
    current = client.cookies[COOKIE]
    secret = load_secret(settings)
    session = unsign(secret, current)
    assert session is not None and session.key_id is not None
    expired = UiSession(session.csrf, int(time.time()) - 1, session.key_id)
    put_cookie(client, sign(secret, expired))
    assert signed_out(client)
    put_cookie(client, sign(secret, UiSession(session.csrf, int(time.time()) + 60, session.key_id)))
    assert not signed_out(client)


def test_an_unknown_key_signs_nobody_in(settings: Settings) -> None:
    client = browser(settings)
    form = client.get("/ui/login")
    answer = client.post("/ui/login", data={"token": "mp_" + "a" * 43, "csrf_token": csrf_of(form.text)})
    assert answer.status_code == 401
    assert "the API key is not valid" in answer.text
    assert signed_out(client)


def test_a_revoked_key_signs_nobody_in_and_ends_its_sessions(settings: Settings) -> None:
    token = new_key(settings, "acme")
    earlier = browser(settings)
    sign_in(earlier, token)
    with session_scope(settings.db_url) as session:
        session.execute(update(ApiKey).where(ApiKey.digest == digest(token)).values(revoked=True))
    assert signed_out(earlier)
    later = browser(settings)
    form = later.get("/ui/login")
    answer = later.post("/ui/login", data={"token": token, "csrf_token": csrf_of(form.text)})
    assert answer.status_code == 401 and signed_out(later)


def test_sign_out_clears_the_cookie(settings: Settings) -> None:
    client = browser(settings)
    csrf = sign_in(client, new_key(settings, "acme"))
    answer = client.post("/ui/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/login"
    assert f'{COOKIE}=""' in answer.headers["set-cookie"] and "Max-Age=0" in answer.headers["set-cookie"]
    assert signed_out(client)


def test_every_post_needs_the_session_token_and_this_origin(settings: Settings, acme_job: str) -> None:
    client = browser(settings)
    csrf = sign_in(client, new_key(settings, "acme"))
    cancel = f"/ui/jobs/{acme_job}/cancel"
    assert client.post(cancel, data={}).status_code == 403
    assert client.post(cancel, data={"csrf_token": "guess"}).status_code == 403
    evil = client.post(cancel, data={"csrf_token": csrf}, headers={"Origin": "http://evil.example"})
    assert evil.status_code == 403 and "another site" in evil.text
    cross = client.post(cancel, data={"csrf_token": csrf}, headers={"Sec-Fetch-Site": "cross-site"})
    assert cross.status_code == 403
    login = client.post("/ui/login", data={"token": "x"}, headers={"Origin": "http://evil.example"})
    assert login.status_code == 403 and not signed_out(client)  # and signs nobody out
    same = client.post(
        cancel, data={"csrf_token": csrf}, headers={"Origin": "http://testserver"}, follow_redirects=False
    )
    assert same.status_code == 303  # the same request from the dashboard's own page goes through
    assert "cancelled" in client.get(f"/ui/jobs/{acme_job}").text


def test_another_tenants_job_answers_404_everywhere(settings: Settings, acme_job: str) -> None:
    client = browser(settings)
    csrf = sign_in(client, new_key(settings, "globex"))
    for path in ("", "/live", "/row", "/events", "/artifacts/model.onnx"):
        answer = client.get(f"/ui/jobs/{acme_job}{path}")
        assert answer.status_code == 404, path
        assert f"no job &#39;{acme_job}&#39; in your account" in answer.text, path
    assert client.post(f"/ui/jobs/{acme_job}/cancel", data={"csrf_token": csrf}).status_code == 404
    assert client.get(f"/ui/compare?ids={acme_job}&ids={acme_job}x").status_code == 404
    assert acme_job not in client.get("/ui/jobs").text


def test_a_form_submits_the_job_the_api_would_make(settings: Settings, tmp_path: Path) -> None:
    token = new_key(settings, "initech")
    client = browser(settings)
    csrf = sign_in(client, token)
    path = builders.save(builders.gemm(64, 10), tmp_path / "gemm.onnx")
    upload = client.post(
        "/ui/models",
        data={"csrf_token": csrf},
        files={"file": ("gemm.onnx", path.read_bytes())},
        follow_redirects=False,
    )
    assert upload.status_code == 303, upload.text
    model_id = upload.headers["location"].split("model_id=")[1]
    form = {
        "csrf_token": csrf,
        "model_id": model_id,
        "method": "svd",
        "rule": "energy",
        "rule_value": "0.8",
        "idempotency_key": "k1",
    }
    submitted = client.post("/ui/jobs", data=form, follow_redirects=False)
    assert submitted.status_code == 303, submitted.text
    job_id = submitted.headers["location"].rsplit("/", 1)[1]
    again = client.post("/ui/jobs", data=form, follow_redirects=False)  # a double-click: the same job
    assert again.headers["location"].endswith(job_id)
    api = TestClient(create_app(settings), headers={"Authorization": f"Bearer {token}"})
    spec = api.get(f"/v1/jobs/{job_id}").json()["spec"]
    assert spec["method"] == "svd" and spec["rank"] == {
        "energy": 0.8,
        "target_macs": None,
        "target_params": None,
        "max_drop": None,
        "weighting": None,
    }
    refused = client.post("/ui/jobs", data={**form, "rule_value": "1.5", "idempotency_key": "k2"})
    assert refused.status_code == 422 and "rank.energy" in refused.text  # the API's own validation
    rejected = client.post("/ui/models", data={"csrf_token": csrf}, files={"file": ("x.onnx", b"not onnx")})
    assert rejected.status_code == 422 and "model-rejected" in rejected.text


def test_no_redirect_after_sign_in_leaves_the_dashboard(settings: Settings) -> None:
    client = browser(settings)
    form = client.get("/ui/login?next=//evil.example/ui/")
    assert 'value="/ui/jobs"' in form.text
    answer = client.post(
        "/ui/login",
        data={
            "token": new_key(settings, "acme"),
            "csrf_token": csrf_of(form.text),
            "next": "https://evil.example",
        },
        follow_redirects=False,
    )
    assert answer.headers["location"] == "/ui/jobs"


def test_pages_carry_a_strict_content_security_policy(app_client: TestClient) -> None:
    policy = app_client.get("/ui/login").headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy


def test_the_dashboard_is_not_in_the_openapi_document(app_client: TestClient) -> None:
    assert not [path for path in app_client.get("/openapi.json").json()["paths"] if path.startswith("/ui")]


def test_the_session_secret_is_made_once_and_kept_private(tmp_path: Path) -> None:
    first = load_secret(Settings(data_dir=tmp_path))
    assert load_secret(Settings(data_dir=tmp_path)) == first and len(first) >= 32
    assert stat.S_IMODE((tmp_path / "session-secret").stat().st_mode) == 0o600
    assert load_secret(Settings(data_dir=tmp_path, session_secret="s" * 32)) == b"s" * 32
    with pytest.raises(ValidationError, match="at least 32 characters"):
        Settings(data_dir=tmp_path, session_secret="short")
