"""The body of `POST /orders`: money, currency, e-mail and name rules."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from checkout_api.schemas.currency import ISO_4217_CODES
from checkout_api.schemas.money import parse_amount
from checkout_api.schemas.orders import CreateOrder, OrderOut


def _body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "order_name": "Poster",
        "amount": "19.99",
        "customer": {"email": "jane@example.com", "name": "Jane"},
    }
    body.update(changes)
    return body


def _errors(body: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        CreateOrder.model_validate(body)
    return {".".join(map(str, e["loc"])): e["msg"] for e in info.value.errors()}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("19.99", "19.99"),
        ("19.9", "19.90"),
        (19.99, "19.99"),
        (19.9, "19.90"),
        (5, "5.00"),
        ("0.01", "0.01"),
        ("19.990", "19.99"),
        ("9999999999.99", "9999999999.99"),
        (Decimal("1.5"), "1.50"),
    ],
)
def test_amount_accepts_positive_values_with_two_places(value: object, expected: str) -> None:
    assert str(parse_amount(value)) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("19.999", "two decimal places"),
        (19.999, "two decimal places"),
        (0.1 + 0.2, "two decimal places"),  # 0.30000000000000004: float noise is refused
        (1e-7, "two decimal places"),
        (0, "greater than zero"),
        ("0.00", "greater than zero"),
        ("-1", "greater than zero"),
        (-5.5, "greater than zero"),
        ("NaN", "decimal number"),
        ("Infinity", "decimal number"),
        (float("nan"), "finite"),
        (float("inf"), "finite"),
        ("abc", "decimal number"),
        ("", "decimal number"),
        ("1e2", "decimal number"),
        ("1_000", "decimal number"),
        (" 19.99", "decimal number"),
        ("١٢", "decimal number"),
        (True, "decimal number"),
        (None, "decimal number"),
        ([], "decimal number"),
        ("10000000000", "at most"),
        (1e20, "at most"),
    ],
)
def test_amount_refuses(value: object, message: str) -> None:
    errors = _errors(_body(amount=value))
    assert list(errors) == ["amount"]
    assert message in errors["amount"]


def test_response_amount_is_a_string_with_two_places() -> None:
    order = CreateOrder.model_validate(_body(amount=19.9))
    assert order.amount == Decimal("19.90")
    dumped = OrderOut.model_validate(
        {
            "order_id": "7f1d3c1e-8a42-4a8b-9d1e-0c5c2b0f4a11",
            "order_name": "x",
            "amount": Decimal("7"),
            "currency": "USD",
            "customer": {"email": "a@example.com", "name": "A"},
            "status": "PENDING",
            "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z",
            "payment": {
                "payment_id": "7f1d3c1e-8a42-4a8b-9d1e-0c5c2b0f4a12",
                "status": "SUCCESSFUL",
                "amount": Decimal("7"),
            },
            "invoice": None,
        }
    ).model_dump(mode="json")
    assert dumped["amount"] == "7.00"
    assert dumped["payment"]["amount"] == "7.00"


def test_currency_defaults_to_usd() -> None:
    assert CreateOrder.model_validate(_body()).currency == "USD"


@pytest.mark.parametrize(("given", "stored"), [("eur", "EUR"), ("Chf", "CHF"), ("JPY", "JPY")])
def test_currency_accepts_iso_codes_in_any_case(given: str, stored: str) -> None:
    assert CreateOrder.model_validate(_body(currency=given)).currency == stored


@pytest.mark.parametrize("code", ["ABC", "US", "USDX", "", "HRK", 840, None, "€"])
def test_currency_refuses_unknown_codes(code: object) -> None:
    errors = _errors(_body(currency=code))
    assert list(errors) == ["currency"]
    assert "ISO 4217" in errors["currency"]


def test_currency_list_is_the_iso_list() -> None:
    assert {"USD", "EUR", "GBP", "JPY", "CHF", "SLE", "VES", "ZWG"} <= ISO_4217_CODES
    assert not {"HRK", "SLL", "ZWL", "VEF"} & ISO_4217_CODES
    assert all(len(c) == 3 and c.isascii() and c.isupper() for c in ISO_4217_CODES)


@pytest.mark.parametrize(
    "email",
    [
        "jane@example.com",
        "bounce@example.com",
        "x.y+tag@sub.example.org",
        "a@b.test",
        "JANE@EXAMPLE.COM",
    ],
)
def test_email_accepts_ordinary_and_test_addresses(email: str) -> None:
    order = CreateOrder.model_validate(_body(customer={"email": email, "name": "J"}))
    assert order.customer.email.lower() == email.lower()


@pytest.mark.parametrize(
    "email",
    [
        "",
        "jane",
        "jane@",
        "@example.com",
        "jane@@example.com",
        "jane doe@example.com",
        "jane@example",
        42,
        "a" * 310 + "@example.com",
    ],
)
def test_email_refuses_malformed_addresses(email: object) -> None:
    errors = _errors(_body(customer={"email": email, "name": "J"}))
    assert list(errors) == ["customer.email"]
    assert "e-mail address" in errors["customer.email"]


@pytest.mark.parametrize("field", ["order_name", "customer.name"])
@pytest.mark.parametrize("name", ["", "   ", "x" * 201])
def test_names_must_have_1_to_200_characters(field: str, name: str) -> None:
    body = _body()
    if field == "order_name":
        body["order_name"] = name
    else:
        body["customer"] = {"email": "jane@example.com", "name": name}
    assert list(_errors(body)) == [field]


def test_names_of_200_characters_are_accepted_and_trimmed() -> None:
    order = CreateOrder.model_validate(_body(order_name=" " + "x" * 198 + " "))
    assert order.order_name == "x" * 198
    assert CreateOrder.model_validate(_body(order_name="x" * 200)).order_name == "x" * 200


def test_the_length_limit_counts_the_name_as_sent() -> None:
    # The OpenAPI document says maxLength 200 of what is sent; so does the validator.
    assert list(_errors(_body(order_name=" " + "x" * 200))) == ["order_name"]


@pytest.mark.parametrize("name", ["a\x00b", "\x00"])
def test_a_nul_character_is_refused_not_a_database_error(name: str) -> None:
    assert list(_errors(_body(order_name=name))) == ["order_name"]


def test_unknown_fields_are_refused_by_name() -> None:
    body = _body(order_name="poster")
    body["colour"] = "red"
    body["customer"] = {**body["customer"], "phone": "123"}
    assert sorted(_errors(body)) == ["colour", "customer.phone"]


def test_missing_fields_are_named() -> None:
    errors = _errors({"amount": "1"})
    assert set(errors) == {"order_name", "customer"}
