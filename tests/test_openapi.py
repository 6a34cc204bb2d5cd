"""The committed openapi.yaml is the app's document, and that document reads well to a client
generator: valid OpenAPI 3.1, ``resource-verb`` operation ids, every error as
application/problem+json, uploads as files, typed records and reports, documented headers."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from fastapi.testclient import TestClient
from openapi_spec_validator import validate

from service import migrate
from service.openapi_export import OPENAPI_YAML, document
from service.runner import run_job
from service.settings import Settings
from service.spec import parse_spec
from service.store import ARTIFACT_NAMES
from service.sweeps import run_sweep
from tests import builders
from tests.harness import app_client

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


def test_the_committed_document_is_valid_openapi_3_1() -> None:
    committed = yaml.safe_load(OPENAPI_YAML.read_text(encoding="utf-8"))
    assert committed["openapi"].startswith("3.1")
    validate(committed)  # raises with the offending path when a keyword is not 3.1's


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def test_uploads_are_files_in_the_only_request_body(schema: dict[str, Any]) -> None:
    for method, path, operation in operations(schema):
        content = operation.get("requestBody", {}).get("content", {})
        # one content type each: openapi-python-client breaks on an operation with two
        assert len(content) <= 1, f"{method} {path} takes {sorted(content)}"
    for operation_id in ("models-create", "datasets-create"):
        (operation,) = [o for _, _, o in operations(schema) if o["operationId"] == operation_id]
        body = _resolve(schema, operation["requestBody"]["content"]["multipart/form-data"]["schema"])
        upload = body["properties"]["file"]
        assert (upload["type"], upload.get("format")) == ("string", "binary"), operation_id


def test_records_reports_and_artifact_names_are_typed(schema: dict[str, Any]) -> None:
    components = schema["components"]["schemas"]
    record = components["JobRecord"]["properties"]
    assert record["error"]["anyOf"] == [{"$ref": "#/components/schemas/Problem"}, {"type": "null"}]
    specs = {ref.rsplit("/", 1)[1] for ref in _refs(record["spec"])}
    assert {"SvdSpec", "NuclearSpec", "VariationalSpec", "SweepSpec"} <= specs
    assert record["artifacts"]["items"]["enum"] == list(ARTIFACT_NAMES)
    by_id = {o["operationId"]: o for _, _, o in operations(schema)}
    (name,) = [p for p in by_id["jobs-artifact"]["parameters"] if p["name"] == "name"]
    assert name["schema"]["enum"] == list(ARTIFACT_NAMES)
    report = {"$ref": "#/components/schemas/JobReport"}
    assert by_id["jobs-report"]["responses"]["200"]["content"]["application/json"]["schema"] == report
    assert by_id["jobs-artifact"]["responses"]["200"]["content"]["application/json"]["schema"] == report
    kinds = _refs(components["JobReport"])
    assert kinds == {"#/components/schemas/CompressionReport", "#/components/schemas/SweepReport"}


def _refs(node: Any) -> set[str]:
    """Every ``$ref`` target at any depth under ``node``."""
    return set(re.findall(r'"\$ref": "([^"]*)"', json.dumps(node)))


def test_request_id_and_retry_after_headers_are_documented(schema: dict[str, Any]) -> None:
    headers = schema["components"]["headers"]
    assert headers["X-Request-Id"]["required"] is True
    for method, path, operation in operations(schema):
        for status, response in operation["responses"].items():
            documented = response.get("headers", {})
            assert "X-Request-Id" in documented, f"{method} {path} {status}"
            if status in ("429", "503", "507"):
                assert "Retry-After" in documented, f"{method} {path} {status}"
    by_id = {o["operationId"]: o for _, _, o in operations(schema)}
    assert "Retry-After" in by_id["jobs-create"]["responses"]["507"]["headers"]


def _validator(schema: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    root = {"$ref": f"#/components/schemas/{name}", "components": schema["components"]}
    return jsonschema.Draft202012Validator(root)


def test_real_reports_match_the_documented_schema(schema: dict[str, Any], tmp_path: Path) -> None:
    model = builders.save(builders.gemm(64, 10), tmp_path / "gemm.onnx")
    spec = parse_spec({"method": "svd", "rank": {"energy": 0.9}, "evaluation": {"latency": False}})
    job = run_job(spec, model, "digits", tmp_path / "work", tmp_path / "job")
    sweep_spec = {
        "methods": ["svd", "prune"],
        "targets": [0.5],
        "strengths": {},
        "seeds": [0],
        "training": {"epochs": 1, "lr": 1e-3, "batch_size": 64, "finetune_epochs": 0},
        "latency": False,
    }
    (tmp_path / "sweep").mkdir()
    run_sweep(sweep_spec, model, "digits", tmp_path / "w2", tmp_path / "sweep", lambda p: None, lambda: False)
    validator = _validator(schema, "JobReport")
    for path in (job.report_path, tmp_path / "sweep" / "report.json"):
        report = json.loads(path.read_text())
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(report)]
        assert not errors, (path.parent.name, errors[:5])
    broken = json.loads(job.report_path.read_text())
    del broken["before"]["macs"]
    assert not _validator(schema, "JobReport").is_valid(broken)  # the schema is not a bare object


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
    with app_client(settings, "openapi") as test_client:
        yield test_client


# error paths that the schema-driven fuzzing (tests/test_schemathesis.py) does not reach
@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("GET", "/v1/jobs", {"headers": {"Authorization": "Bearer mp_wrong"}}, 401),
        ("GET", "/v1/nowhere", {}, 404),
        ("DELETE", "/v1/jobs", {}, 405),
        ("POST", "/v1/jobs", {"content": b"{", "headers": {"Content-Type": "application/json"}}, 400),
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
    assert response.headers["x-request-id"] == response.json()["request_id"]
    body = response.json()
    assert body["status"] == status
    assert body["type"].startswith("https://modelpress.dev/problems/")
    assert body["detail"]
