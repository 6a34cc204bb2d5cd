"""The OpenAPI document as clients nobody on the team wrote read it.

FastAPI's document is adjusted after it is built (and after ``problems.describe`` has made every
error a Problem): uploads are ``format: binary``, which is what generators such as
openapi-python-client read as a file (an OpenAPI 3.1 ``contentMediaType`` alone becomes a text
field); every response states its ``X-Request-Id`` header, and 429/503/507 their ``Retry-After``.
``tests/test_openapi.py`` checks the result with openapi-spec-validator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI

HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-Id": {
        "description": "the id of this request in the server's logs; quote it when reporting a problem "
        "(a request's own X-Request-Id is reused)",
        "required": True,
        "schema": {"type": "string"},
    },
    "Retry-After": {
        "description": "seconds to wait before retrying",
        "required": False,
        "schema": {"type": "integer", "minimum": 0},
    },
}
_RETRY_AFTER = ("429", "503", "507")


def _schemas(node: Any) -> Iterator[dict[str, Any]]:
    """Every object in the document that may be a schema (a superset: any dict, depth first)."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _schemas(value)
    elif isinstance(node, list):
        for value in node:
            yield from _schemas(value)


def binary_uploads(schema: dict[str, Any]) -> None:
    """``format: binary`` beside every ``contentMediaType: application/octet-stream`` string."""
    for node in _schemas(schema):
        if node.get("type") == "string" and node.get("contentMediaType") == "application/octet-stream":
            node["format"] = "binary"


def response_headers(schema: dict[str, Any]) -> None:
    schema.setdefault("components", {})["headers"] = HEADERS
    for item in schema["paths"].values():
        for operation in item.values():
            for status, response in operation.get("responses", {}).items():
                headers = response.setdefault("headers", {})
                headers["X-Request-Id"] = {"$ref": "#/components/headers/X-Request-Id"}
                if status in _RETRY_AFTER:
                    headers["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}


def named_bodies(schema: dict[str, Any]) -> None:
    """A request body written inline under one of FastAPI's own names (``Body_<operation>``, as a
    streamed upload route declares it) becomes that component, as FastAPI would have made it:
    generated clients name their classes after components."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for item in schema["paths"].values():
        for operation in item.values():
            for media in operation.get("requestBody", {}).get("content", {}).values():
                title = media.get("schema", {}).get("title", "")
                if title.startswith("Body_"):
                    components[title] = media["schema"]
                    media["schema"] = {"$ref": f"#/components/schemas/{title}"}
    schema["components"]["schemas"] = dict(sorted(components.items()))


def customise(schema: dict[str, Any]) -> dict[str, Any]:
    named_bodies(schema)
    binary_uploads(schema)
    response_headers(schema)
    return schema


def install(app: FastAPI) -> None:
    """Adjust the document the app serves (and ``make openapi`` writes), once, when first built."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if not getattr(app.state, "openapi_customised", False):
            customise(build())
            app.state.openapi_customised = True
        return build()

    app.openapi = openapi  # type: ignore[method-assign]
