"""The event documents state the wire formats, and they are the formats messages carry.

`amount` is a decimal string with two places, `currency` an upper-case ISO 4217 code,
`customer.email` an (internationalised) e-mail address. The AsyncAPI document points
its `correlationId` at the body field that carries the AMQP `correlation_id` property,
never at an application header that is not sent.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import uuid4

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import create_model

from checkout_api.schemas.currency import ISO_4217_CODES, parse_currency
from checkout_api.schemas.email import parse_email
from contracts import PUBLIC_EVENTS, Message, OrderPaid
from contracts.events import CURRENCY_PATTERN, MAX_AMOUNT, MONEY_PATTERN, Customer
from contracts.schema import asyncapi_document, event_json_schema

DOCS = Path(__file__).resolve().parents[2] / "docs"
BOUNDED = settings(max_examples=200, deadline=None, database=None)


def _amounts(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """Every `amount` and `currency` property anywhere in the schema."""
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for name, sub in node.get("properties", {}).items():
                if name in ("amount", "currency"):
                    found.append({"name": name, **sub})
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(schema)
    return found


def test_every_amount_and_currency_in_every_event_schema_is_constrained() -> None:
    for event in PUBLIC_EVENTS:
        for field in _amounts(event_json_schema(event)):
            expected = MONEY_PATTERN if field["name"] == "amount" else CURRENCY_PATTERN
            assert field["type"] == "string", (event.message_type, field)
            assert field["pattern"] == expected, (event.message_type, field)


def test_the_customer_email_is_an_email_address() -> None:
    customer = event_json_schema(OrderPaid)["$defs"]["Customer"]["properties"]["email"]
    # idn-email: the API accepts internationalised addresses, so messages may carry one.
    assert customer["format"] == "idn-email"
    assert customer["type"] == "string"


def test_the_committed_schemas_carry_the_formats() -> None:
    paid = json.loads((DOCS / "schemas" / "OrderPaid.v1.json").read_text(encoding="utf-8"))
    assert paid["properties"]["amount"]["pattern"] == MONEY_PATTERN
    assert paid["properties"]["currency"]["pattern"] == CURRENCY_PATTERN
    assert paid["$defs"]["Customer"]["properties"]["email"]["format"] == "idn-email"


@BOUNDED
@given(cents=st.integers(min_value=1, max_value=int(MAX_AMOUNT * 100)))
def test_every_amount_serialises_to_the_documented_pattern(cents: int) -> None:
    event = _paid(amount=Decimal(cents) / 100)
    body = json.loads(event.model_dump_json())
    assert re.fullmatch(MONEY_PATTERN, body["amount"]), body["amount"]


def test_every_currency_the_api_accepts_is_written_in_the_documented_pattern() -> None:
    for code in ISO_4217_CODES:
        assert re.fullmatch(CURRENCY_PATTERN, parse_currency(code.lower()))


def test_an_internationalised_address_the_api_accepts_is_what_idn_email_allows() -> None:
    address = parse_email("jörg@bücher.example")
    assert address == "jörg@bücher.example"
    assert not address.isascii()  # a mailbox RFC 5321 (format email) would refuse


def _paid(amount: Decimal) -> OrderPaid:
    return OrderPaid(
        order_id=uuid4(),
        checkout_id=uuid4(),
        payment_id=uuid4(),
        order_name="Poster",
        amount=amount,
        currency="EUR",
        customer=Customer(email="jane@example.com", name="Jane"),
        paid_at=datetime.now(UTC),
    )


def test_correlation_id_points_into_the_body_not_at_a_header() -> None:
    document = json.loads((DOCS / "asyncapi.json").read_text(encoding="utf-8"))
    messages = document["components"]["messages"]
    schemas = document["components"]["schemas"]
    for event in PUBLIC_EVENTS:
        message = messages[f"{event.message_type}:Message"]
        location = message["correlationId"]["location"]
        assert location == f"$message.payload#/{event.correlation_field}"
        assert event.correlation_field in schemas[event.message_type]["required"]
        # Application headers must not define protocol properties (AsyncAPI 3.0).
        assert "correlation_id" not in message["headers"]["properties"]
        properties = message["x-amqp-properties"]["properties"]
        assert {"message_id", "correlation_id", "type", "content_type"} <= set(properties)
        assert properties["type"]["const"] == event.message_type
        assert message["bindings"]["amqp"]["messageType"] == event.message_type


def test_an_event_body_holds_its_correlation_id() -> None:
    event = _paid(Decimal("19.99"))
    assert event.correlation_id() == event.checkout_id


def test_a_body_without_the_correlation_field_has_no_correlation_id_expression() -> None:
    bare = create_model("Bare", __base__=Message, note=(str, ...))
    bare.routing_key = "order.bare"
    [message] = asyncapi_document("checkout", [bare])["components"]["messages"].values()
    assert "correlationId" not in message
    assert "the saga" in message["x-amqp-properties"]["properties"]["correlation_id"]["description"]
