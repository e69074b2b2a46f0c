"""The OpenAPI document says what the API answers, and which operations are public."""

from __future__ import annotations

from typing import Any

import pytest

from checkout_api.app import create_app
from infra.settings import load_settings

PUBLIC = {
    ("get", "/health/live"),
    ("get", "/health/ready"),
    ("get", "/metrics"),
    ("get", "/asyncapi.json"),
    ("get", "/asyncapi.yaml"),
}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    # The document is built from the routes alone: no lifespan, no database.
    return create_app(load_settings()).openapi()


def _operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, path): operation
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    }


def test_post_orders_documents_its_415(document: dict[str, Any]) -> None:
    responses = _operations(document)[("post", "/orders")]["responses"]

    assert "415" in responses
    schema = responses["415"]["content"]["application/problem+json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/Problem"}


def test_every_operation_with_a_json_body_documents_a_415(document: dict[str, Any]) -> None:
    for key, operation in _operations(document).items():
        if "application/json" in operation.get("requestBody", {}).get("content", {}):
            assert "415" in operation["responses"], key


def test_public_operations_declare_no_security_and_the_others_a_key(
    document: dict[str, Any],
) -> None:
    operations = _operations(document)

    assert set(operations) >= PUBLIC
    for key, operation in operations.items():
        if key in PUBLIC:
            assert operation["security"] == [], key
        else:
            assert operation["security"] == [{"apiKey": []}], key


def test_the_console_and_the_documents_pages_are_not_api_operations(
    document: dict[str, Any],
) -> None:
    paths = set(document["paths"])

    assert not any(p.startswith(("/console", "/docs", "/redoc")) for p in paths)
