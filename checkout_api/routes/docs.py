"""API documentation: error responses for OpenAPI, and the AsyncAPI document of the events.

`GET /asyncapi.json` (and `/asyncapi.yaml`) serve the AsyncAPI document of the public
events for this deployment's namespace, generated from the models in `contracts/`
(docs/asyncapi.* is the same document for the default namespace). No HTML viewer:
FastStream's loads its scripts from a CDN, and the API must work offline.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from checkout_api.deps import SettingsDep
from checkout_api.errors import PROBLEM_JSON
from contracts.schema import asyncapi_document, render_json, render_yaml

router = APIRouter(tags=["documentation"])


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for these statuses (422 gets the validation problem)."""
    described = {
        404: "Unknown order, checkout or cancellation",
        409: "The order is already paid, cancelled or past its refund window",
        422: "Invalid input; `errors` names each bad field",
        503: "A dependency is unreachable",
    }
    return {
        status: {
            "description": described.get(status, "Error"),
            "content": {
                PROBLEM_JSON: {
                    "schema": {
                        "$ref": "#/components/schemas/"
                        + ("ValidationProblem" if status == 422 else "Problem")
                    }
                }
            },
        }
        for status in statuses
    }


def located(status: int, location: str) -> dict[int | str, dict[str, Any]]:
    """The `responses=` entry of a success that names the resource in `Location`."""
    return {
        status: {"headers": {"Location": {"description": location, "schema": {"type": "string"}}}}
    }


@lru_cache(maxsize=8)
def _asyncapi(namespace: str, media_type: str) -> str:
    document = asyncapi_document(namespace)
    return render_json(document) if media_type == "application/json" else render_yaml(document)


def _document_response(media_type: str, example: str) -> dict[int | str, dict[str, Any]]:
    return {
        200: {"description": "AsyncAPI 3.0 document", "content": {media_type: {"example": example}}}
    }


@router.get(
    "/asyncapi.json",
    response_class=Response,
    responses=_document_response("application/json", '{"asyncapi": "3.0.0", ...}'),
)
async def asyncapi_json(settings: SettingsDep) -> Response:
    """The AsyncAPI document of the events downstream teams subscribe to (JSON)."""
    return Response(
        _asyncapi(settings.namespace, "application/json"), media_type="application/json"
    )


@router.get(
    "/asyncapi.yaml",
    response_class=Response,
    responses=_document_response("application/yaml", "asyncapi: 3.0.0"),
)
async def asyncapi_yaml(settings: SettingsDep) -> Response:
    """The same document as YAML."""
    return Response(
        _asyncapi(settings.namespace, "application/yaml"), media_type="application/yaml"
    )
