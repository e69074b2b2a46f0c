"""The OpenAPI document: problem schemas, the bearer scheme, and who may call what.

Every protected operation lists `security: [{"apiKey": []}]`, the role it needs in
`x-required-role`, and the refusals the auth middleware can answer before the route
runs (401, 403 for operator routes, 413, 429, 503), so that a client generated from the
document, and schemathesis, know every status the API can answer. A public operation
(health, metrics, the documents) says `security: []`: public on purpose, which linters
(Spectral, Redocly) otherwise cannot tell from forgotten. Every operation that takes a
JSON body lists the 415 it answers to a body of another type, or none.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from checkout_api.auth import Access
from checkout_api.schemas.problems import Problem, ValidationProblem

SECURITY_SCHEME = "apiKey"
_REFUSALS = {
    401: "No `Authorization: Bearer <API key>`, or the key is unknown or revoked "
    "(with `WWW-Authenticate`)",
    403: "The key's role is not enough (this operation needs an operator key)",
    413: "The request body is too large",
    429: "The key is over its rate limit (with `Retry-After`, seconds)",
    503: "A dependency is unreachable (with `Retry-After` when authentication could not run)",
    415: "The body is missing or not JSON (send it with `Content-Type: application/json`)",
}


def _problem_response(status: int) -> dict[str, Any]:
    return {
        "description": _REFUSALS[status],
        "content": {"application/problem+json": {"schema": {"$ref": _ref("Problem")}}},
    }


def _ref(name: str) -> str:
    return f"#/components/schemas/{name}"


def _secure(document: dict[str, Any], access_by_path: Mapping[str, Access]) -> None:
    components = document.setdefault("components", {})
    components.setdefault("securitySchemes", {})[SECURITY_SCHEME] = {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key from `checkout apikey create --name NAME --role ROLE`; "
        "`make run` prints a development key (operator) on first start.",
    }
    for path, operations in document.get("paths", {}).items():
        for operation in operations.values():
            if "application/json" in operation.get("requestBody", {}).get("content", {}):
                operation.setdefault("responses", {}).setdefault("415", _problem_response(415))
        access = access_by_path.get(path, Access.public)
        if access is Access.public:
            for operation in operations.values():
                operation["security"] = []
            continue
        for operation in operations.values():
            operation["security"] = [{SECURITY_SCHEME: []}]
            operation["x-required-role"] = access.value
            responses = operation.setdefault("responses", {})
            statuses = [401, 413, 429, 503] + ([403] if access is Access.operator else [])
            for status in statuses:
                responses.setdefault(str(status), _problem_response(status))


def install_openapi(app: FastAPI, access_by_path: Mapping[str, Access]) -> None:
    """Generate the document once, adding the problem schemas and the security."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
            )
            _, defs = models_json_schema(
                [(Problem, "serialization"), (ValidationProblem, "serialization")],
                ref_template="#/components/schemas/{model}",
            )
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(defs["$defs"])
            _secure(document, access_by_path)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
