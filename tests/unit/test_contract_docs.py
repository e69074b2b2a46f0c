"""The committed documents under docs/ are what the models generate; the API serves them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import uuid4

import yaml
from fastapi import FastAPI

from checkout_api.app import create_app
from checkout_api.routes import docs as docs_routes
from checkout_api.testing import running
from contracts import PUBLIC_EVENTS, Customer, OrderPaid
from contracts.schema import (
    DEFAULT_DOCS_DIR,
    asyncapi_document,
    event_json_schema,
    schema_file_name,
    stale_files,
)
from infra.settings import Settings

DOCS = Path(__file__).resolve().parents[2] / "docs"


def load(name: str) -> Any:
    return json.loads((DOCS / name).read_text(encoding="utf-8"))


def test_the_generator_writes_to_the_repository_docs() -> None:
    assert DEFAULT_DOCS_DIR == DOCS


def test_committed_documents_match_the_models() -> None:
    stale = stale_files()
    assert not stale, (
        "docs/ or contracts/published/ differ from the models in contracts/: "
        + ", ".join(stale)
        + ". Regenerate with `python -m contracts.schema` and commit the result."
    )


def test_yaml_and_json_are_the_same_document() -> None:
    as_yaml = yaml.safe_load((DOCS / "asyncapi.yaml").read_text(encoding="utf-8"))
    assert as_yaml == load("asyncapi.json")


def test_asyncapi_describes_each_public_event_on_the_orders_exchange() -> None:
    document = load("asyncapi.json")
    assert document["asyncapi"] == "3.0.0"
    channels = {c["address"]: c for c in document["channels"].values()}
    assert set(channels) == {
        "order.paid",
        "order.payment_failed",
        "order.cancelled",
        "order.cancellation_rejected",
        "order.payment_refunded",
    }
    messages = document["components"]["messages"]
    schemas = document["components"]["schemas"]
    for event in PUBLIC_EVENTS:
        channel = channels[event.routing_key]
        exchange = channel["bindings"]["amqp"]["exchange"]
        assert exchange == {
            "autoDelete": False,
            "durable": True,
            "name": "checkout.orders",
            "type": "topic",
            "vhost": "/",
        }
        [ref] = [m["$ref"] for m in channel["messages"].values()]
        message = messages[ref.rsplit("/", 1)[-1]]
        assert message["name"] == event.message_type
        assert message["contentType"] == "application/json"
        assert message["bindings"]["amqp"]["messageType"] == event.message_type
        version = message["headers"]["properties"]["x-schema-version"]
        assert version["const"] == event.schema_version
        assert message["headers"]["required"] == ["x-schema-version"]
        assert "message_id" in message["description"]
        assert message["payload"] == {"$ref": f"#/components/schemas/{event.message_type}"}
        # The payload is the body as published: the same as its JSON Schema file.
        body = event_json_schema(event)
        assert schemas[event.message_type]["properties"].keys() == body["properties"].keys()
        assert schemas[event.message_type]["required"] == body["required"]
    amount = schemas["OrderPaid"]["properties"]["amount"]
    assert amount["type"] == "string"
    assert amount["pattern"] == r"^[0-9]{1,10}\.[0-9]{2}$"
    assert "{namespace}.orders" in document["info"]["description"]


def test_asyncapi_for_another_namespace_names_its_exchange() -> None:
    document = asyncapi_document("acme")
    names = {c["bindings"]["amqp"]["exchange"]["name"] for c in document["channels"].values()}
    assert names == {"acme.orders"}


def test_each_public_event_has_its_json_schema() -> None:
    for event in PUBLIC_EVENTS:
        schema = load(f"schemas/{schema_file_name(event)}")
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"] == f"urn:checkout:event:{event.message_type}:v{event.schema_version}"
        assert schema["x-schema-version"] == event.schema_version
        assert schema["x-routing-key"] == event.routing_key
        assert schema["title"] == event.message_type


def test_a_published_order_paid_fits_its_schema() -> None:
    """A hand check (no validator dependency): the body has exactly the schema's fields."""
    schema = load(f"schemas/{schema_file_name(OrderPaid)}")
    event = OrderPaid(
        order_id=uuid4(),
        checkout_id=uuid4(),
        payment_id=uuid4(),
        order_name="Poster",
        amount=Decimal("19.9"),
        currency="EUR",
        customer=Customer(email="jane@example.com", name="Jane"),
        paid_at=datetime.now(UTC),
    )
    body = json.loads(event.model_dump_json())
    assert set(body) == set(schema["properties"])
    assert set(schema["required"]) <= set(body)
    assert body["amount"] == "19.90"
    for name, field in schema["properties"].items():
        if field.get("type") == "string":
            assert isinstance(body[name], str), name
    assert set(body["customer"]) == set(schema["$defs"]["Customer"]["properties"])


@asynccontextmanager
async def _state(_app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    yield {"settings": Settings(namespace="docs_test")}


async def test_the_api_serves_the_asyncapi_document_for_its_namespace() -> None:
    app = FastAPI(lifespan=_state)
    app.include_router(docs_routes.router)
    async with running(app) as client:
        as_json = await client.get("/asyncapi.json")
        as_yaml = await client.get("/asyncapi.yaml")
    assert as_json.status_code == 200
    assert as_json.headers["content-type"] == "application/json"
    assert as_json.json() == asyncapi_document("docs_test")
    assert as_yaml.status_code == 200
    assert as_yaml.headers["content-type"].startswith("application/yaml")
    assert yaml.safe_load(as_yaml.text) == as_json.json()


def test_the_api_routes_include_the_asyncapi_document() -> None:
    app = create_app(Settings(namespace="checkout"))
    paths = app.openapi()["paths"]
    assert {"/asyncapi.json", "/asyncapi.yaml"} <= set(paths)
    assert "application/json" in paths["/asyncapi.json"]["get"]["responses"]["200"]["content"]
