"""The client keeps its own list of methods (it never imports the server); this checks that
list against the server's OpenAPI document, where the method registry publishes its facts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from modelpress_client.types import METHODS, SPARSE_METHODS

OPENAPI = Path(__file__).resolve().parents[2] / "openapi.yaml"


def _job_schemas() -> dict[str, dict[str, Any]]:
    schemas = yaml.safe_load(OPENAPI.read_text())["components"]["schemas"]
    return {
        s["properties"]["method"]["const"]: s
        for s in schemas.values()
        if "const" in s.get("properties", {}).get("method", {})
    }


def test_the_clients_methods_are_the_servers() -> None:
    schemas = yaml.safe_load(OPENAPI.read_text())["components"]["schemas"]
    assert set(METHODS) == set(_job_schemas())
    assert set(METHODS) == set(schemas["SweepCreate"]["properties"]["methods"]["items"]["enum"])


def test_the_client_knows_which_methods_only_lower_nonzeros() -> None:
    shrinks = {name: schema["x-shrinks"] for name, schema in _job_schemas().items()}
    assert set(SPARSE_METHODS) == {name for name, what in shrinks.items() if what == "nonzeros"}
