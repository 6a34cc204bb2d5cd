"""The committed openapi.yaml is the app's document, and that document reads well to a client
generator: ``resource-verb`` operation ids, every error as application/problem+json."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from service import migrate
from service.app import create_app
from service.auth import create_key
from service.db import session_scope
from service.openapi_export import OPENAPI_YAML, document
from service.settings import Settings

METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return document()


def operations(schema: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield method.upper(), path, operation


def test_committed_openapi_yaml_matches_the_app(schema: dict[str, Any]) -> None:
    assert OPENAPI_YAML.exists(), "openapi.yaml is missing: run `python -m service.openapi_export`"
    committed = yaml.safe_load(OPENAPI_YAML.read_text(encoding="utf-8"))
    assert committed == schema, (
        "openapi.yaml differs from the app's OpenAPI document: run `python -m service.openapi_export`"
    )


def test_operation_ids_are_resource_verb_and_unique(schema: dict[str, Any]) -> None:
    ids = [operation.get("operationId") for _, _, operation in operations(schema)]
    bad = [i for i in ids if not isinstance(i, str) or not re.fullmatch(r"[a-z]+(?:-[a-z]+)+", i)]
    assert not bad, f"operation ids must read `resource-verb` (e.g. jobs-create): {bad}"
    assert len(ids) == len(set(ids)), f"duplicate operation ids: {sorted(ids)}"


def test_every_documented_error_is_problem_json(schema: dict[str, Any]) -> None:
    problem = {"$ref": "#/components/schemas/Problem"}
    for method, path, operation in operations(schema):
        errors = {s: r for s, r in operation["responses"].items() if s[0] in "45"}
        assert "500" in errors, f"{method} {path} does not document its 500"
        if operation.get("security"):
            assert "401" in errors, f"{method} {path} needs a key but does not document 401"
        for status, response in errors.items():
            assert response.get("content") == {"application/problem+json": {"schema": problem}}, (
                f"{method} {path} {status} is not documented as application/problem+json"
            )
    assert "HTTPValidationError" not in schema["components"]["schemas"]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("openapi"), max_dataset_bytes=1000)
    migrate.upgrade(settings.db_url)
    with session_scope(settings.db_url) as session:
        _, token = create_key(session, "openapi")
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {token}"}) as test_client:
        yield test_client


# error paths that the schema-driven fuzzing (tests/test_schemathesis.py) does not reach
@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("GET", "/v1/jobs", {"headers": {"Authorization": "Bearer mp_wrong"}}, 401),
        ("GET", "/v1/nowhere", {}, 404),
        ("DELETE", "/v1/jobs", {}, 405),
        ("POST", "/v1/jobs", {"content": b"{", "headers": {"Content-Type": "application/json"}}, 422),
        ("POST", "/v1/jobs", {"content": b"x" * (2 << 20)}, 413),
        ("POST", "/v1/datasets", {"files": {"file": ("d.npz", b"x" * 5000)}}, 413),
        ("POST", "/v1/datasets", {"content": b"x", "headers": {"Content-Type": "text/plain"}}, 415),
        ("GET", "/v1/jobs/nope/artifacts/model.onnx", {}, 404),
        ("GET", "/v1/models?offset=9223372036854775808", {}, 422),  # was a 500 from SQLite
    ],
)
def test_errors_are_problem_json(
    client: TestClient, method: str, path: str, kwargs: dict[str, Any], status: int
) -> None:
    response = client.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert body["type"].startswith("https://modelpress.dev/problems/")
    assert body["detail"]
